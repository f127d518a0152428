"""The guest home: session setup under real zsh, the claude wrapper, configure-home.sh, linters.

Everything runs in tmp_path: a temporary HOME, fake share directories standing in for
/Volumes/My Shared Files or /mnt/clod (CLOD_SHARES_ROOT), and fake tools first on PATH.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GUEST = REPO / "guest-setup"
HOME_SRC = GUEST / "home"
CONFIGURE_HOME = GUEST / "common" / "configure-home.sh"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"

needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")

# A command that reports exactly what it received: argv as hex bytes, physical cwd and $PWD.
PRINTARGS = f"""#!{sys.executable}
import json, os, sys
json.dump({{
    "argv": [os.fsencode(a).hex() for a in sys.argv[1:]],
    "cwd": os.getcwd(),
    "pwd": os.environ.get("PWD"),
    "path": os.environ.get("PATH"),
}}, sys.stdout)
"""

AWKWARD_ARGS = [
    "two words",
    "it's",
    'say "hi"',
    "$HOME",
    "",
    "--",
    "é日本",
    "-n",
    "back\\slash",
    "*",
    "~",
    "a;b|c&d",
    "$(false)",
    "`echo x`",
    " lead and trail ",
]


def remote_command(project: str, subdir: str, shares: list[str], argv: list[str]) -> str:
    """The host's session command, built exactly as the contract says (each value quoted once)."""
    q = shlex.quote
    run_argv = 'exec "$@"'
    return (
        f"exec env CLOD_PROJECT={q(project)} CLOD_SUBDIR={q(subdir)} "
        f"CLOD_SHARES={q('/'.join(shares))} COLORTERM=truecolor LANG=C.UTF-8 "
        f"zsh -l -c {q(run_argv)} clod " + " ".join(q(a) for a in argv)
    )


@pytest.fixture
def guest(tmp_path):
    """A guest user's home (copied from guest-setup/home) and a share root with projects."""
    home = tmp_path / "guest-home"
    shutil.copytree(HOME_SRC, home, symlinks=True)
    shares = tmp_path / "shares"
    (shares / "alpha").mkdir(parents=True)
    (shares / "my app" / "src").mkdir(parents=True)
    tools = tmp_path / "tools"
    tools.mkdir()
    printargs = tools / "printargs"
    printargs.write_text(PRINTARGS)
    printargs.chmod(0o755)
    env = {
        "HOME": str(home),
        "PATH": SYSTEM_PATH,
        "CLOD_SHARES_ROOT": str(shares),
        "CLOD_SHARES_WAIT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LANG": "C.UTF-8",
    }
    return {"home": home, "shares": shares, "printargs": printargs, "env": env, "tmp": tmp_path}


def ssh_session(guest, remote: str, extra_env=None) -> subprocess.CompletedProcess:
    """Run REMOTE as sshd does: the user's login shell (zsh) with -c and the joined string."""
    env = dict(guest["env"], **(extra_env or {}))
    return subprocess.run(["zsh", "-c", remote], env=env, cwd=guest["home"], capture_output=True, timeout=20)


def report(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


# ---------------------------------------------------------------- session setup (~/.zprofile)


@needs_zsh
def test_session_starts_in_subdir_with_argv_byte_exact(guest):
    argv = [str(guest["printargs"]), *AWKWARD_ARGS]
    remote = remote_command("my app", "src", ["alpha", "my app"], argv)
    result = ssh_session(guest, remote)
    out = report(result)  # stdout is only the command's own output
    assert out["argv"] == [a.encode().hex() for a in AWKWARD_ARGS]
    assert out["pwd"] == str(guest["home"] / "projects" / "my app" / "src")
    assert out["cwd"] == str(guest["shares"] / "my app" / "src")
    assert result.stderr == b""
    projects = guest["home"] / "projects"
    assert os.readlink(projects / "alpha") == str(guest["shares"] / "alpha")
    assert os.readlink(projects / "my app") == str(guest["shares"] / "my app")


@needs_zsh
def test_session_puts_home_bin_first_on_path(guest):
    remote = remote_command("alpha", "", ["alpha"], [str(guest["printargs"])])
    out = report(ssh_session(guest, remote))
    home = guest["home"]
    assert out["path"].split(":")[:2] == [str(home / "bin"), str(home / ".local" / "bin")]
    assert out["pwd"] == str(home / "projects" / "alpha")


@needs_zsh
def test_missing_project_exits_1_with_message(guest):
    remote = remote_command("ghost", "", ["alpha", "ghost"], [str(guest["printargs"])])
    result = ssh_session(guest, remote)
    assert result.returncode == 1
    assert result.stdout == b""  # the command never ran
    err = result.stderr.decode()
    assert "project 'ghost' is not available" in err
    assert "clod list" in err


@needs_zsh
def test_missing_subdir_starts_in_project_root_and_says_so(guest):
    remote = remote_command("my app", "lib/deep", ["my app"], [str(guest["printargs"])])
    result = ssh_session(guest, remote)
    out = report(result)
    assert out["pwd"] == str(guest["home"] / "projects" / "my app")
    assert "'lib/deep' does not exist in project 'my app'" in result.stderr.decode()


@needs_zsh
def test_subdir_escaping_the_project_is_refused(guest):
    remote = remote_command("my app", "../alpha", ["alpha", "my app"], [str(guest["printargs"])])
    result = ssh_session(guest, remote)
    assert report(result)["pwd"] == str(guest["home"] / "projects" / "my app")
    assert "stay inside the project" in result.stderr.decode()


@needs_zsh
def test_links_stale_replaced_foreign_kept(guest):
    home, shares = guest["home"], guest["shares"]
    projects = home / "projects"
    projects.mkdir()
    # clod's own links from an earlier boot: a wrong target and a project no longer mapped.
    (projects / "alpha").symlink_to("/mnt/clod/alpha-old")
    (projects / "gone").symlink_to(shares / "gone")
    # Things clod did not make: never removed, even under a mapped project's name.
    (projects / "my app").mkdir()
    (projects / "my app" / "notes.txt").write_text("mine")
    (projects / "mine").symlink_to(guest["tmp"])
    (projects / "file.txt").write_text("keep")
    (projects / "dangling-mine").symlink_to("/nonexistent/elsewhere")

    remote = remote_command("my app", "src", ["alpha", "my app"], [str(guest["printargs"])])
    result = ssh_session(guest, remote)
    out = report(result)

    assert os.readlink(projects / "alpha") == str(shares / "alpha")
    assert not (projects / "gone").is_symlink()
    assert (projects / "my app" / "notes.txt").read_text() == "mine"
    assert os.readlink(projects / "mine") == str(guest["tmp"])
    assert (projects / "file.txt").read_text() == "keep"
    assert (projects / "dangling-mine").is_symlink()
    assert "not clod's link" in result.stderr.decode()
    # The project still opens, through the share itself.
    assert out["cwd"] == str(shares / "my app" / "src")


@needs_zsh
def test_nested_login_shell_keeps_its_directory(guest):
    # `clod shell` runs `zsh -l` inside the session; its .zprofile must not cd back.
    inner = f"cd {shlex.quote(str(guest['tmp']))} && exec zsh -l -c 'pwd'"
    remote = remote_command("alpha", "", ["alpha"], ["zsh", "-c", inner])
    result = ssh_session(guest, remote)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == str(guest["tmp"])


@needs_zsh
def test_plain_login_without_clod_environment(guest):
    result = subprocess.run(
        ["zsh", "-l", "-c", "print -r -- $PWD"],
        env=guest["env"],
        cwd=guest["tmp"],
        capture_output=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == str(guest["tmp"])
    assert not (guest["home"] / "projects").exists()


@needs_zsh
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_session_trusts_mapped_projects_in_git(guest):
    repo = guest["shares"] / "my app"
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=guest["env"])
    remote = remote_command("my app", "", ["alpha", "my app"], ["git", "status", "--short"])
    # Make git treat the share as owned by someone else, as virtio-fs can.
    result = ssh_session(guest, remote, {"GIT_TEST_ASSUME_DIFFERENT_OWNER": "1"})
    assert result.returncode == 0, result.stderr.decode()
    trusted = subprocess.run(
        ["git", "config", "--global", "--get-all", "safe.directory"],
        env=guest["env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert str(guest["shares"] / "my app") in trusted
    assert str(guest["shares"] / "alpha") in trusted


@needs_zsh
def test_interactive_shell_starts_quietly(guest):
    env = dict(guest["env"], TERM="xterm-256color")
    result = subprocess.run(["zsh", "-l", "-i", "-c", "echo ok"], env=env, cwd=guest["tmp"], capture_output=True, text=True, timeout=20)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


@needs_zsh
@pytest.mark.parametrize("name", [".zprofile", ".zshrc", ".config/clod/session.zsh"])
def test_zsh_files_parse(name):
    result = subprocess.run(["zsh", "-n", str(HOME_SRC / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- ~/bin/claude


FAKE_CLAUDE = f"""#!{sys.executable}
import json, os, sys
json.dump({{"argv": sys.argv[1:], "IS_SANDBOX": os.environ.get("IS_SANDBOX")}}, sys.stdout)
"""


@pytest.fixture
def wrapper_env(tmp_path):
    """PATH = ~/bin (the wrapper), then an isolated bin with only bash: no npm, no real claude."""
    home = tmp_path / "guest-home"
    shutil.copytree(HOME_SRC, home, symlinks=True)
    sysbin = tmp_path / "sysbin"
    sysbin.mkdir()
    (sysbin / "bash").symlink_to(shutil.which("bash"))
    env = {
        "HOME": str(home),
        "PATH": f"{home / 'bin'}:{sysbin}",
        "CLOD_CLAUDE_CANDIDATES": "",
    }
    return {"home": home, "env": env, "tmp": tmp_path, "wrapper": home / "bin" / "claude"}


def install_fake_claude(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "claude"
    path.write_text(FAKE_CLAUDE)
    path.chmod(0o755)
    return path


def run_wrapper(wrapper_env, *args, extra_path=None, **env):
    e = dict(wrapper_env["env"], **env)
    if extra_path:
        e["PATH"] = f"{e['PATH']}:{extra_path}"
    return subprocess.run([str(wrapper_env["wrapper"]), *args], env=e, capture_output=True, text=True, timeout=20)


def test_wrapper_adds_skip_permissions_and_sandbox(wrapper_env):
    real = install_fake_claude(wrapper_env["tmp"] / "real")
    result = run_wrapper(wrapper_env, "fix the bug", "-p", "", "é", extra_path=real.parent)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {
        "argv": ["--dangerously-skip-permissions", "fix the bug", "-p", "", "é"],
        "IS_SANDBOX": "1",
    }


@pytest.mark.parametrize(
    "args",
    [["--version"], ["-v"], ["--help"], ["mcp", "list"], ["doctor"], ["--permission-mode", "plan"]],
)
def test_wrapper_passes_management_commands_through(wrapper_env, args):
    real = install_fake_claude(wrapper_env["tmp"] / "real")
    result = run_wrapper(wrapper_env, *args, extra_path=real.parent)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["argv"] == args


def test_wrapper_uses_known_location(wrapper_env):
    real = install_fake_claude(wrapper_env["tmp"] / "known")
    result = run_wrapper(wrapper_env, "hi", CLOD_CLAUDE_CANDIDATES=f"/nonexistent/claude:{real}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["argv"] == ["--dangerously-skip-permissions", "hi"]


def test_wrapper_missing_claude_exits_127_with_install_hint(wrapper_env):
    # Another PATH entry leading back to the wrapper itself must not be taken for Claude Code.
    loop = wrapper_env["tmp"] / "loop"
    loop.mkdir()
    (loop / "claude").symlink_to(wrapper_env["wrapper"])
    result = run_wrapper(wrapper_env, "hi", extra_path=loop)
    assert result.returncode == 127
    assert "Claude Code is not installed" in result.stderr
    assert "npm install -g @anthropic-ai/claude-code" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------- configure-home.sh


def snapshot(root: Path) -> dict:
    """Every entry under root: type, mode, content hash or link target, and mtime."""
    tree = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            detail = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            detail = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            detail = None
        tree[str(path.relative_to(root))] = (stat.filemode(st.st_mode), detail, st.st_mtime_ns)
    return tree


@pytest.fixture
def staged(tmp_path):
    """A home with a Claude login and a staged tree (as the host copies it) to install."""
    home = tmp_path / "guest-home"
    staging = home / ".cache" / "clod-home-staging"
    shutil.copytree(HOME_SRC, staging, symlinks=True)
    ssh = staging / ".ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_text("ssh-ed25519 AAAAC3Nza clod\n")
    (ssh / "authorized_keys").chmod(0o644)
    (home / ".claude").mkdir(parents=True)
    (home / ".claude.json").write_text(
        json.dumps(
            {
                "oauthAccount": {"emailAddress": "ada@example.com"},
                "hasCompletedOnboarding": False,
                "projects": {"/x": {"hasTrustDialogAccepted": True}},
            }
        )
    )
    (home / ".claude" / "settings.json").write_text(json.dumps({"model": "opus", "permissions": {"allow": ["Bash(ls)"]}}))
    env = {
        "HOME": str(home),
        "PATH": SYSTEM_PATH,
        "GIT_CONFIG_NOSYSTEM": "1",
        "CLOD_SHARES_ROOT": "/mnt/clod",
        "CLOD_GIT_NAME": "Ada Lovelace",
        "CLOD_GIT_EMAIL": "ada@example.com",
    }
    return {"home": home, "staging": staging, "env": env}


def configure_home(staged, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CONFIGURE_HOME)],
        env=dict(staged["env"], **env),
        capture_output=True,
        text=True,
        timeout=20,
    )


def git_config(staged, *args) -> list[str]:
    result = subprocess.run(["git", "config", "--global", *args], env=staged["env"], capture_output=True, text=True)
    return result.stdout.splitlines()


def test_configure_home_installs_and_merges(staged):
    home = staged["home"]
    result = configure_home(staged)
    assert result.returncode == 0, result.stderr
    assert (home / ".zprofile").read_bytes() == (HOME_SRC / ".zprofile").read_bytes()
    assert os.access(home / "bin" / "claude", os.X_OK)
    assert (home / ".config" / "clod" / "session.zsh").is_file()

    claude = json.loads((home / ".claude.json").read_text())
    assert claude["oauthAccount"] == {"emailAddress": "ada@example.com"}
    assert claude["projects"] == {"/x": {"hasTrustDialogAccepted": True}}
    assert claude["hasCompletedOnboarding"] is True
    assert claude["bypassPermissionsModeAccepted"] is True
    settings = json.loads((home / ".claude" / "settings.json").read_text())
    assert settings["model"] == "opus"
    assert settings["permissions"] == {"allow": ["Bash(ls)"], "defaultMode": "bypassPermissions"}
    assert settings["env"]["DISABLE_AUTOUPDATER"] == "1"

    assert git_config(staged, "--get", "user.name") == ["Ada Lovelace"]
    assert git_config(staged, "--get", "user.email") == ["ada@example.com"]
    assert git_config(staged, "--get-all", "safe.directory") == ["/mnt/clod/*"]

    assert stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / ".ssh" / "authorized_keys").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / ".claude.json").stat().st_mode) == 0o600
    steps = [line for line in result.stderr.splitlines() if line.startswith("==> step: ")]
    assert len(steps) == 7


def test_configure_home_keeps_existing_authorized_keys(staged):
    ssh = staged["home"] / ".ssh"
    ssh.mkdir()
    (ssh / "authorized_keys").write_text("ssh-ed25519 AAAAhost clod-host-key")  # no newline
    result = configure_home(staged)
    assert result.returncode == 0, result.stderr
    assert (ssh / "authorized_keys").read_text() == "ssh-ed25519 AAAAhost clod-host-key\nssh-ed25519 AAAAC3Nza clod\n"


def test_configure_home_is_idempotent(staged):
    first = configure_home(staged)
    assert first.returncode == 0, first.stderr
    before = snapshot(staged["home"])
    second = configure_home(staged)
    assert second.returncode == 0, second.stderr
    assert snapshot(staged["home"]) == before
    assert "installed" not in second.stderr and "merged" not in second.stderr


def test_configure_home_skips_empty_identity(staged):
    (staged["home"] / ".gitconfig").write_text("[user]\n\tname = Already Here\n")
    result = configure_home(staged, CLOD_GIT_NAME="", CLOD_GIT_EMAIL="")
    assert result.returncode == 0, result.stderr
    assert git_config(staged, "--get", "user.name") == ["Already Here"]
    assert git_config(staged, "--get", "user.email") == []


def test_configure_home_user_claude_files_merge_last(staged):
    (staged["staging"] / ".claude.json").write_text(json.dumps({"theme": "dark"}))
    (staged["staging"] / ".claude").mkdir()
    (staged["staging"] / ".claude" / "settings.json").write_text(json.dumps({"permissions": {"defaultMode": "acceptEdits"}}))
    result = configure_home(staged)
    assert result.returncode == 0, result.stderr
    claude = json.loads((staged["home"] / ".claude.json").read_text())
    assert claude["theme"] == "dark" and claude["oauthAccount"]
    settings = json.loads((staged["home"] / ".claude" / "settings.json").read_text())
    assert settings["permissions"] == {"allow": ["Bash(ls)"], "defaultMode": "acceptEdits"}


def test_configure_home_refuses_to_clobber_broken_claude_json(staged):
    broken = staged["home"] / ".claude.json"
    broken.write_text("{not json")
    result = configure_home(staged)
    assert result.returncode != 0
    assert "==> FAILED step: merge Claude Code config" in result.stderr
    assert str(broken) in result.stderr
    assert broken.read_text() == "{not json"


def test_configure_home_without_staging_names_the_path(staged):
    shutil.rmtree(staged["staging"])
    result = configure_home(staged)
    assert result.returncode == 1
    assert "no staged home at" in result.stderr
    assert "==> FAILED step: check staged home" in result.stderr


# ---------------------------------------------------------------- linters


def is_shell_script(path: Path) -> bool:
    """*.sh, or a first line naming sh or bash (zsh files are checked by test_zsh_files_parse)."""
    first = path.read_bytes()[:200].split(b"\n", 1)[0]
    if first.startswith(b"#!"):
        return first.rstrip().split(b"/")[-1].split(b" ")[-1] in (b"sh", b"bash")
    return path.suffix == ".sh"


def shell_scripts() -> list[Path]:
    return [p for p in sorted(GUEST.rglob("*")) if p.is_file() and is_shell_script(p)]


def test_guest_scripts_found():
    names = {p.relative_to(GUEST).as_posix() for p in shell_scripts()}
    assert {"common/lib.sh", "common/configure-home.sh", "home/bin/claude"} <= names
    assert {"macos/install.sh", "macos/configure.sh"} <= names


# One test per script, so a finding names its file.
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.relative_to(GUEST).as_posix())
def test_shellcheck(script):
    result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# macOS runs guest scripts with bash 3.2 until Homebrew's bash exists: keep bash-4 features out.
BASH4_ONLY = ["declare -A", "local -A", "typeset -A", "mapfile", "readarray", ",,}", "^^}", "local -n", "declare -n", "[[ -v", "${EPOCH", "&>>", ";&"]


def test_guest_scripts_avoid_bash4_features():
    offenders = []
    for path in shell_scripts():
        if not path.read_bytes().startswith(b"#!/usr/bin/env bash") and path.parent.name != "common":
            continue  # only the bash scripts that macOS runs
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            offenders += [f"{path}:{number}: {word}" for word in BASH4_ONLY if word in line]
    assert offenders == []
