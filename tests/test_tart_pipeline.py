"""The macOS-host pipeline end to end, against the fake tart and a real sshd.

`make run PROJECT=... ARGS='-- CMD'` with the fake tart first on PATH: base and
dst are built once (the tart argv sequence is asserted), the command runs over
real SSH in the stand-in guest, and its exit status is clod's. Also: reuse,
dst-only rebuilds, Ctrl-C during the base build, the user's ~/.ssh untouched.
The handed cases (B01, B10, ...) are in test_tart_cases.py; the host and its
stand-in guest come from tests/tart_host.py. Only the first test builds from
nothing; the others start from a copy of one session-wide build (`built_host`).
"""

import os
import signal
import time

import pytest
from conftest import BIN, ROOT
from guest_sshd import available

pytest.register_assert_rewrite("tart_host")  # before the import below: the plugin's asserts explain themselves
from tart_host import BASE, DST, IMAGE  # noqa: E402

pytest_plugins = ["tart_host"]
pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


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


def test_touching_a_home_file_rebuilds_only_dst(built_host):
    host = built_host
    assert host.make_run("-- true").returncode == 0  # dst runs when its input changes
    home_file = ROOT / "guest-setup" / "home" / ".zprofile"
    times = home_file.stat()
    host.tart_log.unlink()
    try:
        now = time.time() + 2
        os.utime(home_file, (now, now))
        # While dst runs (an agent may be at work in it), no terminal to say
        # yes: it is not replaced; the run uses it and says how to apply.
        kept = host.make_run("-- echo kept")
        assert kept.returncode == 0, kept.stderr
        assert kept.stdout == "kept\n"
        assert "your changes apply after: clod stop" in kept.stderr, kept.stderr
        assert not [c for c in host.tart_calls() if c[0] in ("clone", "stop", "delete")]
        assert host.run(str(BIN / "clod"), "stop").returncode == 0
        host.tart_log.unlink()
        result = host.make_run("-- echo rebuilt")
    finally:
        os.utime(home_file, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "rebuilt\n"
    clones = [c[1:3] for c in host.tart_calls() if c[0] == "clone"]
    assert [src for src, _ in clones] == [BASE, clones[1][0]] and clones[1][1] == DST, clones


def test_remote_exit_status_is_clods(built_host):
    host = built_host
    result = host.make_run("-- sh -c 'echo out; echo err >&2; exit 3'")
    assert result.stdout == "out\n"
    assert "err" in result.stderr
    assert host.run(str(BIN / "clod"), "run", "--project", str(host.project), "--", "sh", "-c", "exit 3").returncode == 3


def test_ctrl_c_during_base_build_keeps_old_base_and_leaves_no_temp_vm(built_host):
    host = built_host  # base and dst built and stopped
    child = host.popen(str(BIN / "clod"), "run", "--rebuild-base", "--project", str(host.project), "--", "true",
                       FAKE_TART_CLONE_SLEEP="30")  # fmt: skip
    host.wait_for_call("clone", IMAGE)
    time.sleep(1)  # inside the slow copy
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
