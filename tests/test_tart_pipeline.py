"""The macOS-host pipeline end to end, against the fake tart and a real sshd.

`make run PROJECT=... ARGS='-- CMD'` with the fake tart first on PATH: base and
dst are built once (the tart argv sequence is asserted), the command runs over
real SSH in the stand-in guest, and its exit status is clod's. Also: reuse,
dst-only rebuilds, Ctrl-C during the base build, the user's ~/.ssh untouched,
and the handed cases B01, B10, B14, B15, B16, B19.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, FAKES, ROOT
from guest_sshd import available, guest_sshd

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

BASE = "clodpod-xcode-base"
DST = "clodpod-xcode"
IMAGE = "ghcr.io/cirruslabs/macos-tahoe-xcode:latest"


class Host:
    """One isolated host: env for the scripts, the fake tart's home and log."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp = tmp
        self.tart_log = tmp / "tart.log"
        self.guest_log = tmp / "guest-tools.log"
        fake_bin = tmp / "host-bin"
        fake_bin.mkdir()
        # df: plenty of room unless a test says otherwise (FAKE_DF_AVAIL_KB).
        (fake_bin / "df").write_text(
            "#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
            'echo "/dev/fake 999999999 1 ${FAKE_DF_AVAIL_KB:-900000000} 1% /"\n'
        )
        (fake_bin / "df").chmod(0o755)
        self.env = dict(
            env,
            PATH=f"{FAKES}:{fake_bin}:{FAKES / 'bin-darwin'}:{env['PATH']}",
            CLOD_BACKEND="tart",
            CLOD_HOST_SYSTEM="Darwin",  # host facts from the fake sysctl: 10 CPUs, 16 GiB
            TART_HOME=str(tmp / "tart"),
            FAKE_TART_LOG=str(self.tart_log),
            FAKE_TART_IP="127.0.0.1",
            MACOS_USER="root",
            GIT_CONFIG_NOSYSTEM="1",
        )
        self.project = tmp / "p"
        self.project.mkdir()
        (self.project / "sentinel").write_text("keep me\n")

    def run(self, *argv, timeout=120, **env) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env={**self.env, **env}, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, cwd=self.tmp)  # fmt: skip

    def make_run(self, args: str, **env):
        return self.run("make", "-s", "-C", str(ROOT), "run", f"PROJECT={self.project}", f"ARGS={args}", **env)

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

    def vms(self) -> dict[str, str]:
        out = self.run(str(FAKES / "tart"), "list", "--source", "local", "--format", "json").stdout
        return {vm["Name"]: vm["State"] for vm in json.loads(out)}


@pytest.fixture
def host(tmp_path, isolated_env):
    host = Host(tmp_path, isolated_env)
    # clod's key exists before the "guest" starts, so the guest can trust it
    # (the password bootstrap of a Cirrus image has no stand-in here).
    key = subprocess.run([str(BIN / "project-map"), "list"], env=host.env, capture_output=True)
    assert key.returncode == 0
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", "from clod import ssh; ssh.key_path()"],
        env={**host.env, "PYTHONPATH": str(ROOT / "lib")}, check=True,
    )  # fmt: skip
    public = (Path(host.env["CLOD_STATE_DIR"]) / "ssh" / "id_ed25519.pub").read_text().strip()
    shares = tmp_path / "shares"
    shares.mkdir()
    guest_env = {
        "CLOD_SHARES_ROOT": str(shares),
        "CLOD_ETC_DIR": str(tmp_path / "guest-etc"),
        "FAKE_STATE": str(tmp_path / "guest-tool-state"),
        "FAKE_LOG": str(host.guest_log),
        "CLOD_SHARES_WAIT": "0",
    }
    (tmp_path / "guest-etc" / "sudoers.d").mkdir(parents=True)
    (tmp_path / "guest-etc" / "sudoers.d" / "root-nopasswd").write_text("root ALL=(ALL) NOPASSWD: ALL\n")
    with guest_sshd(tmp_path / "sshd", public, guest_env) as (port, guest_home):
        host.env["CLOD_TART_SSH_PORT"] = str(port)
        host.guest_home = guest_home
        # Tart shares each project at /Volumes/My Shared Files/<name>; here a link plays that part.
        (shares / "p").symlink_to(host.project)
        yield host
        host.run(str(BIN / "clod"), "stop", "--timeout", "2")


def test_first_run_builds_base_and_dst_then_runs_the_command(host, home):
    (home / ".ssh").mkdir()
    known_hosts = home / ".ssh" / "known_hosts"
    known_hosts.write_bytes(b"github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    before = known_hosts.read_bytes()

    result = host.make_run("-- echo hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\n"

    verbs = host.verbs()
    base_tmp = next(c[2] for c in host.tart_calls() if c[:2] == ["clone", IMAGE])
    dst_tmp = next(c[2] for c in host.tart_calls() if c[:2] == ["clone", BASE])
    assert base_tmp.startswith(BASE + "-build-") and dst_tmp.startswith(DST + "-build-")
    # The order that matters: pull into a temp VM, set it up, put it in place;
    # then the same for dst from base; then size and start dst.
    expected_order = [
        f"clone {IMAGE} {base_tmp}", f"set {base_tmp}", f"run {base_tmp}", f"ip {base_tmp}", f"stop {base_tmp}",
        f"clone {base_tmp} {BASE}", f"delete {base_tmp}",
        f"clone {BASE} {dst_tmp}", f"set {dst_tmp}", f"run {dst_tmp}", f"stop {dst_tmp}",
        f"clone {dst_tmp} {DST}", f"delete {dst_tmp}",
        f"set {DST}", f"run {DST}", f"ip {DST}",
    ]  # fmt: skip
    positions = [next(i for i, verb in enumerate(verbs) if (verb + " ").startswith(step + " ")) for step in expected_order]
    assert positions == sorted(positions), verbs
    run_call = next(c for c in host.tart_calls() if c[:1] == ["run"] and c[-1] == DST)
    assert "--no-graphics" not in run_call and f"--dir=p:{host.project}" in run_call
    # The guest ran the macOS install and configure steps (stub tools logged).
    guest_tools = host.guest_log.read_text()
    assert "brew" in guest_tools and "security" in guest_tools
    assert (host.guest_home / ".zprofile").exists()
    # Nothing of the user's SSH setup was touched.
    assert known_hosts.read_bytes() == before
    assert sorted(p.name for p in (home / ".ssh").iterdir()) == ["known_hosts"]
    assert host.vms() == {BASE: "stopped", DST: "running"}

    # A second run rebuilds nothing and reuses the running VM.
    host.tart_log.unlink()
    again = host.make_run("-- echo again")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "again\n"
    assert not [v for v in host.verbs() if v.startswith(("clone", "run", "set"))]


def test_touching_a_home_file_rebuilds_only_dst(host):
    assert host.make_run("-- true").returncode == 0
    home_file = ROOT / "guest-setup" / "home" / ".zprofile"
    times = home_file.stat()
    host.tart_log.unlink()
    try:
        now = time.time() + 2
        os.utime(home_file, (now, now))
        result = host.make_run("-- echo rebuilt")
    finally:
        os.utime(home_file, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "rebuilt\n"
    clones = [c[1:3] for c in host.tart_calls() if c[0] == "clone"]
    assert [src for src, _ in clones] == [BASE, clones[1][0]] and clones[1][1] == DST, clones


def test_remote_exit_status_is_clods(host):
    result = host.make_run("-- sh -c 'echo out; echo err >&2; exit 3'")
    assert result.stdout == "out\n"
    assert "err" in result.stderr
    assert host.run(str(BIN / "clod"), "run", "--project", str(host.project), "--", "sh", "-c", "exit 3").returncode == 3


def test_ctrl_c_during_base_build_keeps_old_base_and_leaves_no_temp_vm(host):
    assert host.make_run("-- true").returncode == 0
    assert host.run("make", "-s", "-C", str(ROOT), "stop").returncode == 0
    child = subprocess.Popen(
        [str(BIN / "clod"), "run", "--rebuild-base", "--project", str(host.project), "--", "true"],
        env={**host.env, "FAKE_TART_CLONE_SLEEP": "30"}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=host.tmp,
    )  # fmt: skip
    deadline = time.time() + 60
    while not any(c[:2] == ["clone", IMAGE] for c in host.tart_calls()[-3:]) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(child.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(child.pid, signal.SIGINT)  # a second Ctrl-C must not cut the cleanup short
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    vms = host.vms()
    assert BASE in vms and DST in vms, vms
    assert not [name for name in vms if "-build-" in name], vms
    assert (host.project / "sentinel").read_text() == "keep me\n"
    # The next run builds again without a name clash.
    assert host.make_run("-- echo fine").stdout == "fine\n"
