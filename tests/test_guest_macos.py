"""macOS guest scripts (base install.sh, dst configure.sh) against fake macOS tools.

The fakes in tests/fakes/guest-macos log every call to FAKE_LOG (name and arguments separated by
0x1f), keep state in FAKE_STATE (so idempotence is observable), and fail on demand when
"NAME ARGS..." matches the glob FAKE_FAIL. System paths go through CLOD_ETC_DIR.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "guest-setup"
INSTALL = GUEST / "macos" / "install.sh"
CONFIGURE = GUEST / "macos" / "configure.sh"
FAKES = REPO / "tests" / "fakes" / "guest-macos"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClodTestKey clod@host"
IMAGE_RULE = "admin ALL=(ALL) NOPASSWD: ALL\n"

INSTALL_STEPS = [
    "preflight",
    "set host name",
    "install clod's SSH key",
    "enable Remote Login",
    "disable SSH password login",
    "use zsh as the login shell",
    "ensure Homebrew",
    "install Homebrew formulae",
    "install Claude Code",
    "detach installer images",
    "flush directory caches",
    "set sudo policy",
]


@pytest.fixture
def mac(tmp_path):
    """A fake macOS guest: admin's home, /etc with the Cirrus image's sudo rule, fakes on PATH."""
    home = tmp_path / "admin-home"
    home.mkdir()
    etc = tmp_path / "etc"
    (etc / "sudoers.d").mkdir(parents=True)
    (etc / "sudoers.d" / "admin-nopasswd").write_text(IMAGE_RULE)
    (etc / "ssh").mkdir()
    (etc / "ssh" / "sshd_config").write_text("Include /etc/ssh/sshd_config.d/*\nUsePAM yes\n")
    state = tmp_path / "fake-state"
    state.mkdir()
    (state / "hdiutil.mounts").write_text("/dev/disk4s2\t/Volumes/Install macOS Sequoia\n/dev/disk5s1\t/Volumes/Data\n")
    log = tmp_path / "fake.log"
    env = {
        "HOME": str(home),
        "PATH": f"{FAKES}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "FAKE_STATE": str(state),
        "FAKE_LOG": str(log),
        "CLOD_ETC_DIR": str(etc),
        "CLOD_AUTHORIZED_KEY": KEY,
        "CLOD_HOSTNAME": "clod-test",
        "GIT_CONFIG_NOSYSTEM": "1",
        "CLOD_SHARES_ROOT": "/Volumes/My Shared Files",
    }
    return {"home": home, "etc": etc, "state": state, "log": log, "env": env}


def run(mac, script: Path, **env) -> subprocess.CompletedProcess:
    mac["log"].write_text("")
    return subprocess.run(
        ["bash", str(script)],
        env=dict(mac["env"], **env),
        capture_output=True,
        text=True,
        timeout=30,
    )


def calls(mac) -> list[list[str]]:
    return [line.split("\x1f") for line in mac["log"].read_text().splitlines()]


def steps(result) -> list[str]:
    prefix = "==> step: "
    return [line[len(prefix) :] for line in result.stderr.splitlines() if line.startswith(prefix)]


def changing_calls(mac) -> list[list[str]]:
    """Calls that change the guest (installs, writes, sets), as opposed to queries."""
    changing = []
    for call in calls(mac):
        name, args = call[0], call[1:]
        if name == "sudo":
            name, args = args[1], args[2:]  # "sudo -n CMD ...": judge CMD
        if (
            (name == "brew" and args[:1] == ["install"])
            or (name == "npm" and args[:1] == ["install"])
            or (name == "scutil" and args[:1] == ["--set"])
            or (name == "systemsetup" and args[:1] == ["-setremotelogin"])
            or (name == "dscl" and args[1:2] == ["-create"])
            or (name in ("tee", "mv", "rm", "chmod"))
            or (name == "hdiutil" and args[:1] == ["detach"])
            or (name == "security" and args[:1] in (["create-keychain"], ["set-keychain-settings"]))
            or (name == "defaults" and args[:1] == ["write"])
        ):
            changing.append(call)
    return changing


def test_install_runs_every_step_in_order(mac):
    result = run(mac, INSTALL)
    assert result.returncode == 0, result.stderr
    assert steps(result) == INSTALL_STEPS

    state, etc, home = mac["state"], mac["etc"], mac["home"]
    for key in ("HostName", "LocalHostName", "ComputerName"):
        assert (state / f"scutil.{key}").read_text() == "clod-test\n"
    assert (home / ".ssh" / "authorized_keys").read_text() == KEY + "\n"
    assert (home / ".ssh" / "authorized_keys").stat().st_mode & 0o777 == 0o600
    assert (state / "remotelogin").exists()
    dropin = (etc / "ssh" / "sshd_config.d" / "000-clod.conf").read_text()
    assert "PasswordAuthentication no" in dropin
    assert (state / "usershell").read_text() == "/bin/zsh\n"
    for formula in ("bash", "coreutils", "git", "jq", "node", "python", "ripgrep", "uv", "zsh-completions"):
        assert (state / "brew" / formula).exists()
    assert (state / "npm-global" / "bin" / "claude").exists()
    assert (state / "hdiutil.mounts").read_text() == "/dev/disk5s1\t/Volumes/Data\n"
    # Sudo policy off by default: the image's rule is gone and nothing replaced it.
    assert list((etc / "sudoers.d").iterdir()) == []


def test_sudo_rule_removal_is_the_last_privileged_call(mac):
    result = run(mac, INSTALL)
    assert result.returncode == 0, result.stderr
    sudo_calls = [c for c in calls(mac) if c[0] == "sudo"]
    assert sudo_calls[-1][2:] == ["rm", "-f", str(mac["etc"] / "sudoers.d" / "admin-nopasswd")]
    # The fake sudo now behaves like the real one without the rule: a prompt, so a failure.
    probe = subprocess.run(["sudo", "-n", "true"], env=mac["env"], capture_output=True, text=True)
    assert probe.returncode == 1 and "password is required" in probe.stderr


def test_allow_sudo_writes_validated_rule(mac):
    result = run(mac, INSTALL, ALLOW_SUDO="1")
    assert result.returncode == 0, result.stderr
    sudoers = mac["etc"] / "sudoers.d"
    assert sorted(p.name for p in sudoers.iterdir()) == ["clod"]
    assert "admin ALL=(ALL) NOPASSWD: ALL" in (sudoers / "clod").read_text()
    assert (sudoers / "clod").stat().st_mode & 0o777 == 0o440
    names = [c[0] if c[0] != "sudo" else c[2] for c in calls(mac)]
    assert "visudo" in names
    assert names.index("visudo") < len(names) - 1 - names[::-1].index("mv")  # checked before it goes live


def test_install_second_run_changes_nothing(mac):
    first = run(mac, INSTALL, ALLOW_SUDO="1")
    assert first.returncode == 0, first.stderr
    assert any(c[:2] == ["brew", "install"] for c in calls(mac))
    second = run(mac, INSTALL, ALLOW_SUDO="1")
    assert second.returncode == 0, second.stderr
    assert steps(second) == INSTALL_STEPS
    assert changing_calls(mac) == []


def test_install_rerun_on_fresh_image_rule_changes_nothing(mac):
    """Default policy: the rerun needs the image's rule back (as a fresh clone has); then no-op."""
    assert run(mac, INSTALL).returncode == 0
    (mac["etc"] / "sudoers.d" / "admin-nopasswd").write_text(IMAGE_RULE)
    second = run(mac, INSTALL)
    assert second.returncode == 0, second.stderr
    assert [c for c in changing_calls(mac) if "admin-nopasswd" not in c[-1]] == []


@pytest.mark.parametrize(
    ("fail", "step"),
    [
        ("brew install*", "install Homebrew formulae"),
        ("scutil --set*", "set host name"),
        ("npm install*", "install Claude Code"),
        ("visudo*", "set sudo policy"),
    ],
)
def test_failing_tool_stops_the_build_naming_the_step(mac, fail, step):
    result = run(mac, INSTALL, FAKE_FAIL=fail, ALLOW_SUDO="1")
    assert result.returncode != 0
    assert f"==> FAILED step: {step}" in result.stderr
    assert steps(result)[-1] == step
    if step != "set sudo policy":
        # The build stopped there: the image's sudo rule is still in place for a retry.
        assert (mac["etc"] / "sudoers.d" / "admin-nopasswd").exists()


def test_install_without_passwordless_sudo_fails_in_preflight(mac):
    (mac["etc"] / "sudoers.d" / "admin-nopasswd").unlink()
    result = run(mac, INSTALL)
    assert result.returncode == 1
    assert "passwordless sudo is not available for admin" in result.stderr
    assert steps(result) == ["preflight"]


def test_password_login_stays_on_without_a_key(mac):
    result = run(mac, INSTALL, CLOD_AUTHORIZED_KEY="")
    assert result.returncode == 0, result.stderr
    assert not (mac["etc"] / "ssh" / "sshd_config.d" / "000-clod.conf").exists()
    assert "password login stays on" in result.stderr


def test_bad_authorized_key_is_rejected(mac):
    result = run(mac, INSTALL, CLOD_AUTHORIZED_KEY="not a key")
    assert result.returncode == 1
    assert "does not look like an OpenSSH public key" in result.stderr
    assert "==> FAILED step: install clod's SSH key" in result.stderr


# ---------------------------------------------------------------- configure.sh (dst build)


@pytest.fixture
def staged_mac(mac):
    shutil.copytree(GUEST / "home", mac["home"] / ".cache" / "clod-home-staging", symlinks=True)
    mac["env"].update(CLOD_GIT_NAME="Ada", CLOD_GIT_EMAIL="ada@example.com")
    return mac


def test_configure_sets_up_home_keychain_and_xcode(staged_mac):
    mac = staged_mac
    result = run(mac, CONFIGURE)
    assert result.returncode == 0, result.stderr
    assert steps(result)[0] == "configure home"
    assert "put Xcode DerivedData inside each project" in steps(result)
    assert (mac["home"] / ".zprofile").is_file()
    assert (mac["home"] / "Library" / "Keychains" / "login.keychain-db").is_file()
    assert (mac["state"] / "keychain.settings").read_text() == "no-timeout\n"
    value = mac["state"] / "defaults.com.apple.dt.Xcode.IDECustomDerivedDataLocation"
    assert value.read_text() == "DerivedData\n"
    assert any(c[:2] == ["security", "unlock-keychain"] for c in calls(mac))


def test_configure_second_run_changes_nothing(staged_mac):
    assert run(staged_mac, CONFIGURE).returncode == 0
    second = run(staged_mac, CONFIGURE)
    assert second.returncode == 0, second.stderr
    assert changing_calls(staged_mac) == []


def test_configure_wrong_keychain_password_names_the_step(staged_mac):
    result = run(staged_mac, CONFIGURE, CLOD_KEYCHAIN_PASSWORD="wrong")
    assert result.returncode == 1
    assert "==> FAILED step: unlock the login keychain" in result.stderr
    assert "CLOD_KEYCHAIN_PASSWORD" in result.stderr
