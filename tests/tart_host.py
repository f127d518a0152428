"""A macOS host for the Tart tests: the fake tart first on PATH, a fake `df`,
and a real sshd on 127.0.0.1 playing the guest (tests/guest_sshd.py).

Fixtures (registered by `pytest_plugins = ["tart_host"]` in a test module):

  host        a host with nothing built: the first `make run` builds base and dst.
  built_host  a host whose base and dst images are already built and stopped:
              a copy of one session-wide build (TART_HOME, clod's state dir, the
              guest's home, host key and tool state), so tests that only need a
              built dst skip the build. The copy is byte-for-byte what a build
              leaves behind (sparse disks stay sparse; mtimes are kept, so the
              Make stamps stay newer than their inputs).
  guest_env   extra variables for the guest's sessions (e.g. FAKE_FAIL for a stub
              macOS tool); override with @pytest.mark.parametrize("guest_env", [...]).

Host also puts a logging `ssh` (the real one; ssh_calls() reads what clod ran) on
PATH, and points HTTPS_PROXY at a closed port so nothing asks a real registry.
"""

import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import BIN, FAKES, ROOT
from guest_sshd import guest_sshd

REAL_SSH = shutil.which("ssh") or "/usr/bin/ssh"

BASE = "clodpod-xcode-base"
DST = "clodpod-xcode"
IMAGE = "ghcr.io/cirruslabs/macos-tahoe-xcode:latest"


class Host:
    """One isolated host: env for the scripts, the fake tart's home and log."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp = tmp
        self.tart_log = tmp / "tart.log"
        self.guest_log = tmp / "guest-tools.log"
        self.state = Path(env["CLOD_STATE_DIR"])
        self.home = Path(env["HOME"])
        self.tart_home = tmp / "tart"
        fake_bin = tmp / "host-bin"
        fake_bin.mkdir()
        # df: plenty of room unless a test says otherwise (FAKE_DF_AVAIL_KB).
        (fake_bin / "df").write_text(
            "#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
            'echo "/dev/fake 999999999 1 ${FAKE_DF_AVAIL_KB:-900000000} 1% /"\n'
        )
        (fake_bin / "df").chmod(0o755)
        # ssh: the real one, each call logged (TERM, then argv; fields end in US) to ssh.log.
        self.ssh_log = tmp / "ssh.log"
        (fake_bin / "ssh").write_text(
            "#!/bin/sh\n{ printf 'TERM=%s\\037' \"${TERM-}\"; for a in \"$@\"; do printf '%s\\037' \"$a\"; done; echo; }"
            f' >>"{self.ssh_log}"\nexec {REAL_SSH} "$@"\n'
        )
        (fake_bin / "ssh").chmod(0o755)
        self.env = dict(
            env,
            PATH=f"{FAKES}:{fake_bin}:{FAKES / 'bin-darwin'}:{env['PATH']}",
            CLOD_BACKEND="tart",
            CLOD_HOST_SYSTEM="Darwin",  # host facts from the fake sysctl: 10 CPUs, 16 GiB
            TART_HOME=str(self.tart_home),
            FAKE_TART_LOG=str(self.tart_log),
            FAKE_TART_IP="127.0.0.1",
            MACOS_USER="root",
            GIT_CONFIG_NOSYSTEM="1",
            # No registry lookups from tests: image sizes fall back to clod's estimate at once.
            HTTPS_PROXY="http://127.0.0.1:9",
            https_proxy="http://127.0.0.1:9",
        )
        self.project = tmp / "p"
        self.project.mkdir()
        (self.project / "sentinel").write_text("keep me\n")
        self.guest_home: Path | None = None
        self.guest_env: dict[str, str] = {}  # extra variables for every guest session

    # ------------------------------------------------------------ running things

    def environ(self, **env) -> dict[str, str]:
        """The host's env with these changes (None removes a variable)."""
        merged = {**self.env, **env}
        return {name: value for name, value in merged.items() if value is not None}

    def run(self, *argv, timeout=120, **env) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.environ(**env), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=self.tmp)  # fmt: skip

    def clod(self, *argv, **env) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "clod"), *argv, **env)

    def clod_run(self, *cmd, project: Path | None = None, options=(), **env) -> subprocess.CompletedProcess:
        """`clod run [OPTIONS] --project P -- CMD...`"""
        return self.clod("run", *options, "--project", str(project or self.project), "--", *cmd, **env)

    def tart_wrap(self, *argv, **env) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "tart-wrap"), *argv, **env)

    def make_run(self, args: str, **env):
        return self.run("make", "-s", "-C", str(ROOT), "run", f"PROJECT={self.project}", f"ARGS={args}", **env)

    def popen(self, *argv, **env) -> subprocess.Popen:
        """Start a script in its own session (so a test can send it a Ctrl-C)."""
        return subprocess.Popen(argv, env=self.environ(**env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=self.tmp)  # fmt: skip

    # ------------------------------------------------------------ what happened

    def tart_calls(self) -> list[list[str]]:
        if not self.tart_log.exists():
            return []
        return [json.loads(line) for line in self.tart_log.read_text().splitlines()]

    def verbs(self) -> list[str]:
        """Each call without its options: "clone SRC DST", "set NAME", ..."""
        takes_value = {"--wait", "--timeout", "--cpu", "--memory", "--format", "--source"}
        verbs = []
        for call in self.tart_calls():
            words = [a for i, a in enumerate(call) if not a.startswith("-") and (i == 0 or call[i - 1] not in takes_value)]
            verbs.append(" ".join(words))
        return verbs

    def calls(self, *prefix: str) -> list[list[str]]:
        """The tart calls whose words (options dropped) start with prefix."""
        return [c for c, v in zip(self.tart_calls(), self.verbs(), strict=True) if v.split()[: len(prefix)] == list(prefix)]

    def ssh_calls(self) -> list[tuple[str, list[str]]]:
        """(TERM, argv) of every ssh clod ran."""
        if not self.ssh_log.exists():
            return []
        calls = []
        for line in self.ssh_log.read_text().splitlines():
            term, *argv = line.split("\x1f")[:-1]
            calls.append((term.removeprefix("TERM="), argv))
        return calls

    def vms(self) -> dict[str, str]:
        out = self.run(str(FAKES / "tart"), "list", "--source", "local", "--format", "json").stdout
        return {vm["Name"]: vm["State"] for vm in json.loads(out)}

    def vm_record(self, name: str = DST) -> Path:
        return self.state / "vms" / f"{name}.json"

    def wait_for_call(self, *prefix: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not self.calls(*prefix):
            assert time.monotonic() < deadline, f"no tart {' '.join(prefix)} within {timeout}s: {self.verbs()}"
            time.sleep(0.05)


def make_key(host: Host) -> str:
    """clod's key exists before the "guest" starts, so the guest can trust it
    (the password bootstrap of a Cirrus image has no stand-in here)."""
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", "from clod import ssh; ssh.key_path()"],
        env={**host.env, "PYTHONPATH": str(ROOT / "lib")}, check=True,
    )  # fmt: skip
    return (host.state / "ssh" / "id_ed25519.pub").read_text().strip()


@contextmanager
def guest(host: Host, public_key: str):
    """Start the stand-in guest for `host` (its sshd, shares and stub tools)."""
    tmp = host.tmp
    shares = tmp / "shares"
    shares.mkdir(exist_ok=True)
    guest_env = {
        "CLOD_SHARES_ROOT": str(shares),
        "CLOD_ETC_DIR": str(tmp / "guest-etc"),
        "FAKE_STATE": str(tmp / "guest-tool-state"),
        "FAKE_LOG": str(host.guest_log),
        "CLOD_SHARES_WAIT": "0",
    }
    guest_env.update(host.guest_env)
    (tmp / "guest-etc" / "sudoers.d").mkdir(parents=True, exist_ok=True)
    (tmp / "guest-etc" / "sudoers.d" / "root-nopasswd").write_text("root ALL=(ALL) NOPASSWD: ALL\n")
    with guest_sshd(tmp / "sshd", public_key, guest_env) as (port, guest_home):
        host.env["CLOD_TART_SSH_PORT"] = str(port)
        host.guest_home = guest_home
        # Tart shares each project at /Volumes/My Shared Files/<name>; here a link plays that part.
        if not (shares / "p").is_symlink():
            (shares / "p").symlink_to(host.project)
        try:
            yield host
        finally:
            # Tart's hard stop for whatever still runs: no `tart run` outlives the test.
            for name, state in host.vms().items():
                if state == "running":
                    host.run(str(FAKES / "tart"), "stop", name)


@pytest.fixture
def guest_env() -> dict[str, str]:
    """Extra variables for every session of the stand-in guest; a test sets
    them with @pytest.mark.parametrize("guest_env", [{...}])."""
    return {}


@pytest.fixture
def host(tmp_path, isolated_env, guest_env):
    """A host with no image built yet, its guest sshd running."""
    new = Host(tmp_path, isolated_env)
    new.guest_env.update(guest_env)
    with guest(new, make_key(new)):
        yield new


# ---------------------------------------------------------------- prebuilt images

# What a build leaves that a copy must carry over, relative to the host's tmp dir.
# The state dir and HOME are found through the env (isolated_env puts them in tmp).
BUILT_TREES = ("tart", "guest-tool-state", "guest-etc", "sshd/guest-home")
BUILT_FILES = ("sshd/ssh_host_ed25519_key", "sshd/ssh_host_ed25519_key.pub")


def copy_tree(source: Path, target: Path):
    """cp -a, keeping sparse files sparse (a fake disk is 50 GB of holes) and mtimes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--sparse=always", str(source), str(target)], check=True)


@pytest.fixture(scope="session")
def built_template(tmp_path_factory) -> Path:
    """One `make dst` for the whole session; tests copy what it left behind."""
    root = tmp_path_factory.mktemp("built")
    env = {k: v for k, v in os.environ.items() if k not in ("CLOD_STATE_DIR", "HOME", "TART_HOME", "CLOD_BACKEND")}
    (root / "home").mkdir()
    env.update(HOME=str(root / "home"), CLOD_STATE_DIR=str(root / "state"), NO_COLOR="1")
    template = Host(root, env)
    with guest(template, make_key(template)):
        built = template.run("make", "-s", "-C", str(ROOT), "dst", timeout=300)
        assert built.returncode == 0, built.stderr
        assert template.vms() == {BASE: "stopped", DST: "stopped"}
    return root


@pytest.fixture
def built_host(tmp_path, isolated_env, built_template, guest_env):
    """A host whose base and dst are built (copied from the session's build)."""
    new = Host(tmp_path, isolated_env)
    new.guest_env.update(guest_env)
    for tree in BUILT_TREES:
        if (built_template / tree).exists():
            copy_tree(built_template / tree, tmp_path / tree)
    for file in BUILT_FILES:
        copy_tree(built_template / file, tmp_path / file)
    shutil.rmtree(new.state, ignore_errors=True)
    copy_tree(built_template / "state", new.state)
    shutil.rmtree(new.state / "locks", ignore_errors=True)
    # The template's project list maps nothing of this host; start with none.
    (new.state / "projects.json").unlink(missing_ok=True)
    public = (new.state / "ssh" / "id_ed25519.pub").read_text().strip()
    with guest(new, public):
        assert new.vms() == {BASE: "stopped", DST: "stopped"}
        yield new
