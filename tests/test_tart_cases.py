"""The handed cases B01, B10, B14, B15, B16 and B19 (../shared/cases/CASES.md) and
issue 3's item 6 (launch lock, projects added to a running VM, `clod stop` twice),
each through the real scripts (bin/clod, bin/tart-wrap, bin/image-build, make)
against the fake tart and the stand-in guest of tests/tart_host.py.

Most tests start from `built_host` (base and dst built and stopped, copied from one
session-wide build). Every test also checks that the user's ~/.ssh is never written.
"""

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager

import pytest
from conftest import BIN, FAKES, ROOT
from guest_sshd import available, free_port

pytest.register_assert_rewrite("tart_host")  # before the import below: the plugin's asserts explain themselves
from tart_host import BASE, DST, Host  # noqa: E402

pytest_plugins = ["tart_host"]
pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

SEQUOIA = "ghcr.io/cirruslabs/macos-sequoia-xcode:latest"


@pytest.fixture(autouse=True)
def users_ssh_untouched(home):
    yield
    assert not (home / ".ssh").exists(), "clod wrote to the user's ~/.ssh"


@contextmanager
def other_vm(host: Host, name: str):
    """`tart run NAME` started by someone else (not clod), for as long as the block runs."""
    with open(host.tmp / f"tart-run-{name}.log", "ab") as output:
        child = subprocess.Popen([str(FAKES / "tart"), "run", "--no-graphics", name], env=host.env, stdin=subprocess.DEVNULL,
                                 stdout=output, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while host.vms().get(name) != "running":
                assert child.poll() is None and time.monotonic() < deadline, (host.tmp / f"tart-run-{name}.log").read_text()
                time.sleep(0.05)
            yield
        finally:
            if child.poll() is None:
                host.run(str(FAKES / "tart"), "stop", name)
                child.wait(timeout=30)


def mtime(host: Host, vm: str) -> int:
    """When the VM's files were last replaced (clone rewrites config.json)."""
    return (host.tart_home / "vms" / vm / "config.json").stat().st_mtime_ns


def no_build_leftovers(host: Host):
    vms = host.vms()
    assert BASE in vms and DST in vms, vms
    assert not [name for name in vms if "-build-" in name], vms
    assert not [p.name for p in (host.tart_home / "vms").iterdir() if "-build-" in p.name]  # partial VM dirs too
    assert not list((host.state / "builds").glob("*.json"))


def mapped(host: Host) -> str:
    listed = host.clod("list")
    assert listed.returncode == 0, listed.stderr
    assert str(host.project) in listed.stdout, listed.stdout
    return listed.stdout


# ---------------------------------------------------------------- B01: no IP address


def test_b01_no_ip_address_names_dhcp_leases_and_state_matches_tart(built_host):
    host = built_host
    result = host.clod_run("true", FAKE_TART_NO_IP="1", CLOD_BOOT_TIMEOUT="2")
    assert result.returncode != 0
    err = result.stderr
    assert "no IP address" in err and "DHCP lease pool" in err and "DHCPLeaseTimeSecs" in err, err
    assert "Local Network" not in err, err
    ip_calls = host.calls("ip", DST)
    assert len(ip_calls) == 1 and ip_calls[0][ip_calls[0].index("--wait") + 1] == "2"  # a bounded wait
    assert host.ssh_calls() == []  # no ssh to an empty host
    # clod leaves the VM running, and says so as tart does; the mapping stays.
    assert host.vms()[DST] == "running"
    assert host.vm_record().exists()
    assert f"vm {DST}: running" in mapped(host)

    # The network is back, but another running VM reports the same address
    # (tart #1097): clod refuses to ssh into whichever VM answers.
    with other_vm(host, BASE):
        again = host.clod_run("echo", "ok")
    assert again.returncode != 0
    assert again.stdout == ""
    assert f"VMs {DST} and {BASE} both report IP 127.0.0.1" in again.stderr, again.stderr
    assert f"tart stop {BASE}" in again.stderr
    assert host.ssh_calls() == []
    assert len(host.calls("run", DST)) == 1


def test_b01_a_vm_that_stopped_is_not_reported_as_a_dhcp_problem(built_host):
    host = built_host
    # `tart run` dies after the VM read as running (a crash, a late VZ error)
    # while clod waits for an address that cannot come.
    result = host.clod_run("true", FAKE_TART_RUN_EXIT_AFTER="1.5", FAKE_TART_NO_IP="1", CLOD_BOOT_TIMEOUT="4")
    assert result.returncode != 0
    assert f"tart run {DST}" in result.stderr and "tart-run-clodpod-xcode.log" in result.stderr, result.stderr
    assert "DHCP" not in result.stderr and "Local Network" not in result.stderr, result.stderr
    assert host.vms()[DST] == "stopped"
    assert not host.vm_record().exists()
    assert host.ssh_calls() == []


# ---------------------------------------------------------------- B10: tart run fails at once


def test_b10_two_other_macos_vms_running_refuses_before_tart_run(built_host):
    host = built_host
    for name in ("other-a", "other-b"):
        assert host.run(str(FAKES / "tart"), "clone", BASE, name).returncode == 0
    with other_vm(host, "other-a"), other_vm(host, "other-b"):
        host.tart_log.unlink()
        result = host.clod_run("true")
    assert result.returncode != 0
    assert "other-a" in result.stderr and "other-b" in result.stderr and "clod stop" in result.stderr, result.stderr
    assert not host.calls("run"), host.verbs()
    assert not host.vm_record().exists()
    mapped(host)


@pytest.mark.parametrize(
    "kind, said, hints",
    [
        ("limit", "The number of VMs exceeds the system limit", ["leaked", "reboot"]),
        ("start", "The virtual machine failed to start.", ["logged-in GUI session"]),
    ],
)
def test_b10_tart_run_exits_at_once_shows_why_and_records_nothing(built_host, kind, said, hints):
    host = built_host
    result = host.clod_run("true", FAKE_TART_RUN_FAIL=kind)
    assert result.returncode != 0
    assert said in result.stderr, result.stderr
    for hint in hints:
        assert hint in result.stderr, result.stderr
    assert len(host.calls("run", DST)) == 1
    assert not host.vm_record().exists()  # never marked running
    assert host.vms()[DST] == "stopped"
    assert host.ssh_calls() == []
    mapped(host)


def test_b10_display_mode_cannot_change_while_the_vm_runs(built_host):
    host = built_host
    assert host.clod_run("true").returncode == 0  # with a window: clod's default
    result = host.clod_run("true", options=["--no-graphics"])
    assert result.returncode != 0
    assert "already running with a window" in result.stderr and "display mode cannot change" in result.stderr, result.stderr
    assert "clod stop" in result.stderr
    assert len(host.calls("run", DST)) == 1
    assert host.vms()[DST] == "running"


# ---------------------------------------------------------------- B14: interrupted builds


def test_b14_ctrl_c_during_the_dst_clone_keeps_the_old_dst(built_host):
    host = built_host
    dst_before = mtime(host, DST)
    child = host.popen(str(BIN / "clod"), "run", "--rebuild-dst", "--project", str(host.project), "--", "true",
                       FAKE_TART_CLONE_SLEEP="30")  # fmt: skip
    host.wait_for_call("clone", BASE)
    time.sleep(1)  # inside the slow copy
    os.killpg(child.pid, signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    no_build_leftovers(host)
    assert mtime(host, DST) == dst_before
    assert (host.project / "sentinel").read_text() == "keep me\n"


def test_b14_the_next_build_removes_what_a_killed_build_left(built_host):
    host = built_host
    child = host.popen(str(BIN / "image-build"), "dst")
    deadline = time.monotonic() + 60
    while not (left := [n for n, state in host.vms().items() if n.startswith(DST + "-build-") and state == "running"]):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    child.kill()  # kill -9: no cleanup at all
    child.communicate(timeout=30)
    assert list((host.state / "builds").glob("*.json")), "the killed build's record of its VMs is gone"

    result = host.run(str(BIN / "image-build"), "dst")
    assert result.returncode == 0, result.stderr
    assert f"cleaning up after an interrupted build: {left[0]}" in result.stderr, result.stderr
    assert left[0] not in host.vms()
    no_build_leftovers(host)


# ---------------------------------------------------------------- B15: a guest step fails


@pytest.mark.parametrize("guest_env", [{"FAKE_FAIL": "brew install*"}])
def test_b15_failing_guest_step_aborts_the_build_and_keeps_the_old_images(built_host):
    host = built_host
    shutil.rmtree(host.tmp / "guest-tool-state" / "brew")  # a freshly pulled image has none of the formulae
    base_before, dst_before = mtime(host, BASE), mtime(host, DST)
    result = host.clod_run("true", options=["--rebuild-base"])
    assert result.returncode != 0
    err = result.stderr
    assert "base install failed in step 'install Homebrew formulae'" in err, err
    assert "brew: injected failure (brew install*)" in err  # the guest's output tail
    no_build_leftovers(host)
    assert (mtime(host, BASE), mtime(host, DST)) == (base_before, dst_before)
    assert not host.calls("run", DST)


def test_b15_tart_exec_without_a_guest_agent_is_a_clear_error(built_host):
    host = built_host
    with other_vm(host, DST):
        result = host.tart_wrap("exec", DST, "true", FAKE_TART_EXEC="noagent")
    assert result.returncode != 0
    assert "is the Tart Guest Agent running?" in result.stderr  # tart's own words
    assert "no Tart Guest Agent answered" in result.stderr and f"ssh-run {DST}" in result.stderr, result.stderr


# ---------------------------------------------------------------- B16: pull fails


@pytest.mark.parametrize(
    "kind, says",
    [
        ("nospace", ["tart clone ran out of disk space", "No space left on device", "free space"]),
        ("auth", ["refused access (403)", "stale saved credentials", "tart logout ghcr.io"]),
        ("ratelimit", ["rate-limiting downloads (429)", "429 Too Many Requests", "retry"]),
    ],
)
def test_b16_a_failed_pull_says_why_and_keeps_the_old_base(built_host, kind, says):
    host = built_host
    base_before = mtime(host, BASE)
    # A new macOS release: the base is rebuilt from an image not in tart's cache.
    result = host.clod_run("true", MACOS_VERSION="sequoia", FAKE_TART_PULL_FAIL=kind, FAKE_TART_PULL_PARTIAL_VM="1")
    assert result.returncode != 0
    for text in says:
        assert text in result.stderr, result.stderr
    assert len(host.calls("clone", SEQUOIA)) == 1  # no retry loop
    no_build_leftovers(host)  # for nospace: the partial VM the clone left is gone
    assert mtime(host, BASE) == base_before
    mapped(host)


def test_b16_free_space_is_checked_before_any_download(built_host):
    host = built_host
    result = host.clod_run("true", MACOS_VERSION="sequoia", FAKE_DF_AVAIL_KB=str(10 * 1024 * 1024))
    assert result.returncode != 0
    assert "not enough disk space" in result.stderr and "needs about 90 GiB" in result.stderr, result.stderr
    assert "10.0 GiB free" in result.stderr
    assert not host.calls("clone"), host.verbs()
    no_build_leftovers(host)
    mapped(host)


# ---------------------------------------------------------------- B19: terminal, locale, exit status


def test_b19_term_colours_tty_and_exit_status(built_host):
    host = built_host
    terminal = {"TERM": "xterm-ghostty", "COLORTERM": "truecolor", "LANG": "UTF-8"}
    plain = host.clod_run("sh", "-c", 'echo "$COLORTERM|$LANG"; tty', **terminal)
    assert plain.stdout == "truecolor|en_US.UTF-8\nnot a tty\n", plain.stderr
    term, argv = host.ssh_calls()[-1]
    assert "-T" in argv and "-t" not in argv and term == "xterm-256color"

    def in_a_terminal(command: str, **env):
        line = f"{BIN / 'clod'} run --project {host.project} -- sh -c '{command}'"
        done = host.run("script", "-qec", line, "/dev/null", **{**terminal, **env})
        return done.returncode, done.stdout.replace("\r", "").replace("^@", "").splitlines()  # ^@: script's echoed EOF

    status, lines = in_a_terminal("tty; echo $TERM")
    assert status == 0, lines
    assert lines[-2].startswith("/dev/pts/") and lines[-1] == "xterm-256color", lines  # unknown TERM: the fallback
    assert "-t" in host.ssh_calls()[-1][1]
    # A known TERM passes through; COLORTERM is forwarded only when set; the remote status is clod's.
    status, lines = in_a_terminal('echo "$TERM|${COLORTERM-unset}"; exit 3', TERM="screen-256color", COLORTERM=None)
    assert status == 3 and lines[-1] == "screen-256color|unset", lines
    # (without a terminal: test_tart_pipeline.py::test_remote_exit_status_is_clods)

    # ssh's own error is shown, naming the endpoint; not a silent exit.
    closed = free_port()
    failed = host.clod_run("true", CLOD_TART_SSH_PORT=str(closed), CLOD_BOOT_TIMEOUT="1")
    assert failed.returncode != 0
    assert f"root@127.0.0.1:{closed} (VM {DST})" in failed.stderr and "Connection refused" in failed.stderr, failed.stderr
    assert len(host.calls("run", DST)) == 1


# ---------------------------------------------------------------- issue 3, item 6: running


def test_two_clod_runs_at_once_make_one_dst_build_and_one_start(built_host):
    host = built_host
    assert host.run("make", "-s", "-C", str(ROOT), "rebuild-dst").returncode == 0
    children = [host.popen(str(BIN / "clod"), "run", "--project", str(host.project), "--", "echo", word) for word in "AB"]
    results = [(child.communicate(timeout=120), child.returncode) for child in children]
    assert [(out, status) for (out, _), status in results] == [("A\n", 0), ("B\n", 0)], results
    clones = host.calls("clone", BASE)
    assert len(clones) == 1 and clones[0][2].startswith(DST + "-build-"), host.verbs()
    assert len(host.calls("run", DST)) == 1, host.verbs()


def test_projects_added_while_running_need_a_restart_and_stop_is_idempotent(built_host):
    host = built_host
    assert host.clod_run("true").returncode == 0
    other = host.tmp / "q"
    other.mkdir()
    assert host.clod("add", str(other)).returncode == 0
    host.tart_log.unlink()

    kept = host.clod_run("echo", "still")  # no TTY: no question, no restart
    assert kept.returncode == 0 and kept.stdout == "still\n", kept.stderr
    assert "'q'" in kept.stderr and "clod stop && clod run" in kept.stderr, kept.stderr
    refused = host.clod_run("true", project=other)
    assert refused.returncode != 0
    assert "project 'q' is not mapped in the running VM" in refused.stderr and "clod stop" in refused.stderr
    assert not host.calls("stop") and not host.calls("run"), host.verbs()

    first, second = host.clod("stop"), host.clod("stop")
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert "no clod VM is running" in second.stderr
    assert host.vms()[DST] == "stopped"
    assert not host.vm_record().exists()
    assert len(host.calls("stop", DST)) == 1


# ---------------------------------------------------------------- Ctrl-C without a terminal


def test_ctrl_c_without_a_terminal_ends_the_command_in_the_guest(built_host):
    host = built_host
    assert host.clod_run("true").returncode == 0  # the VM runs; the next run only attaches
    marker = host.tmp / "guest-started"
    child = subprocess.Popen(
        [str(BIN / "clod"), "run", "--project", str(host.project), "--", "sh", "-c", f"touch {marker}; exec sleep 1047"],
        env=host.environ(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, cwd=host.tmp,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), child.stderr.read() if child.poll() is not None else "the guest command never started"
    os.killpg(child.pid, signal.SIGINT)
    try:
        child.communicate(timeout=60)
        # The "guest" here is this host's sshd: the command's process group must be gone.
        left = subprocess.run(["pgrep", "-f", "^sleep 1047$"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["pkill", "-f", "^sleep 1047$"])
        child.kill()
    assert child.returncode == 130
    assert left == "", "the guest command outlived the interrupt"
