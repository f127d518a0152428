"""Pins tests/fakes/tart to the tart CLI contract (/work/shared/tart-cli-contract.md).

Every test runs the fake as a subprocess with TART_HOME in tmp_path, the way clod's
own tests will.  Running state is checked independently with fcntl F_GETLK on
config.json, so these tests also pin *how* the fake marks a VM running.
"""

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAKE_TART = Path(__file__).parent / "fakes" / "tart"
IMAGE = "ghcr.io/cirruslabs/macos-tahoe-xcode:latest"


class Tart:
    """Runs the fake with an isolated TART_HOME and argv log."""

    def __init__(self, tmp_path):
        self.home = tmp_path / "tart-home"
        self.log = tmp_path / "tart-argv.jsonl"
        self.env = {**os.environ, "TART_HOME": str(self.home), "FAKE_TART_LOG": str(self.log)}
        for knob in [k for k in self.env if k.startswith("FAKE_TART_") and k != "FAKE_TART_LOG"]:
            del self.env[knob]
        self.children = []

    def __call__(self, *args, env=None, stdin=None, timeout=20):
        return subprocess.run([sys.executable, str(FAKE_TART), *args], env={**self.env, **(env or {})},
                              input=stdin, capture_output=True, text=True, timeout=timeout)

    def start_run(self, name, *args, env=None):
        """Background `tart run`, like an orchestrator does; waits until it holds the lock."""
        out = open(self.home.parent / f"run-{name}.log", "w")
        proc = subprocess.Popen([sys.executable, str(FAKE_TART), "run", "--no-graphics", *args, name],
                                env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        self.children.append(proc)
        wait_until(lambda: lock_pid(self.vm(name)) == proc.pid or proc.poll() is not None)
        return proc

    def run_log(self, name):
        return (self.home.parent / f"run-{name}.log").read_text()

    def vm(self, name):
        return self.home / "vms" / name

    def config(self, name):
        return json.loads((self.vm(name) / "config.json").read_text())

    def json(self, *args):
        result = self(*args, "--format", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def argv_log(self):
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def tart(tmp_path):
    fake = Tart(tmp_path)
    yield fake
    for proc in fake.children:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def vm(tart):
    assert tart("create", "--linux", "vm1").returncode == 0
    return "vm1"


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def lock_pid(vm_dir):
    """An independent running() check: who holds an fcntl lock on config.json."""
    try:
        fd = os.open(vm_dir / "config.json", os.O_RDONLY)
    except OSError:
        return 0
    try:
        request = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, request))
    finally:
        os.close(fd)
    return 0 if l_type == fcntl.F_UNLCK else pid


def state_of(tart, name):
    return tart.json("get", name)["State"]


# --- cross-cutting: error paths, parsing, logging ---------------------------------------------

def test_version_and_help_exit_zero(tart):
    assert tart("--version").stdout == "2.32.1\n"
    assert tart("--help").returncode == 0
    assert tart("run", "--help").returncode == 0


def test_validation_errors_print_usage_and_exit_64(tart, vm):
    result = tart("create", "vm2")
    assert result.returncode == 64
    assert result.stderr.startswith("Error: Please specify either a --from-ipsw or --linux option!\nUsage: tart create")
    assert "See 'tart create --help' for more information." in result.stderr
    assert tart("get", vm, "--bogus").stderr.startswith("Error: Unknown option '--bogus'")
    assert tart("get").returncode == 64
    assert tart("set", vm, "--cpu", "many").returncode == 64


def test_options_accept_equals_form_and_any_position(tart, vm):
    assert tart("set", "--memory=8192", vm).returncode == 0
    assert tart("set", vm, "--cpu", "6").returncode == 0
    assert tart.config(vm)["memorySize"] == 8192 * 1024 * 1024
    assert tart.config(vm)["cpuCount"] == 6


def test_every_invocation_is_logged_as_one_json_line(tart, vm):
    tart("set", vm, "--cpu", "2")
    tart("get", vm, "--format", "json")
    assert tart.argv_log() == [["create", "--linux", "vm1"], ["set", "vm1", "--cpu", "2"],
                               ["get", "vm1", "--format", "json"]]


def test_missing_vm_exits_2_but_run_takes_the_validate_path(tart):
    for verb in ("get", "set", "ip", "stop", "exec"):
        result = tart(verb, "nope", *(["true"] if verb == "exec" else []))
        assert (result.returncode, result.stderr) == (2, 'the specified VM "nope" does not exist\n'), verb
    result = tart("run", "nope")
    assert (result.returncode, result.stderr) == (1, 'Error: the specified VM "nope" does not exist\n')


def test_injected_failure_hits_only_the_named_vm(tart, vm):
    tart("create", "--linux", "vm2")
    env = {"FAKE_TART_FAIL": "set:vm1", "FAKE_TART_FAIL_MESSAGE": "boom"}
    assert (tart("set", vm, "--cpu", "2", env=env).returncode, tart("set", vm, env=env).stderr) == (1, "boom\n")
    assert tart("set", "vm2", "--cpu", "2", env=env).returncode == 0


# --- layout, config.json, list, get ---------------------------------------------------------

def test_create_writes_tart_layout_and_pretty_config(tart, vm):
    assert sorted(p.name for p in tart.vm(vm).iterdir()) == ["config.json", "disk.img", "nvram.bin"]
    assert (tart.home / "cache").is_dir() and (tart.home / "tmp").is_dir()
    text = (tart.vm(vm) / "config.json").read_text()
    assert '\n  "memorySize" : 4294967296,' in text and '\n  "os" : "linux",' in text
    disk = (tart.vm(vm) / "disk.img").stat()
    assert disk.st_size == 50 * 10**9 and disk.st_blocks * 512 < 10**6  # sparse


def test_list_json_fields_types_and_order(tart, vm):
    tart("create", "--linux", "a-vm")
    assert tart("clone", IMAGE, "mac").returncode == 0
    rows = tart.json("list")
    assert [(r["Source"], r["Name"]) for r in rows] == [
        ("local", "a-vm"), ("local", "mac"), ("local", "vm1"),
        ("OCI", IMAGE), ("OCI", rows[-1]["Name"])]
    assert rows[-1]["Name"].startswith("ghcr.io/cirruslabs/macos-tahoe-xcode@sha256:")
    for row in rows:
        assert set(row) == {"Source", "Name", "Disk", "Size", "Accessed", "Running", "State"}
        assert isinstance(row["Disk"], int) and isinstance(row["Size"], int)
        assert isinstance(row["Running"], bool) and row["State"] == "stopped"
        time.strptime(row["Accessed"], "%Y-%m-%dT%H:%M:%SZ")
    assert tart("list", "--source", "local", "-q").stdout == "a-vm\nmac\nvm1\n"
    assert [r["Source"] for r in tart.json("list", "--source", "oci")] == ["OCI", "OCI"]
    assert tart("list", "--source", "cloud").returncode == 64


def test_list_skips_incomplete_dirs_and_empty_text_is_one_line(tart):
    (tart.home / "vms" / "partial").mkdir(parents=True)
    (tart.home / "vms" / "partial" / "disk.img").write_bytes(b"x")
    assert tart("list").stdout == "\n"
    assert tart("list", "-q").stdout == ""
    assert tart.json("list") == []


def test_get_json_fields_and_types(tart, vm):
    info = tart.json("get", vm)
    assert info == {"OS": "linux", "CPU": 4, "Memory": 4096, "Disk": 50, "DiskFormat": "raw",
                    "Size": info["Size"], "Display": "1024x768", "Running": False, "State": "stopped"}
    assert isinstance(info["Size"], str) and len(info["Size"].split(".")[1]) == 3
    assert tart("get", vm).stdout.split()[:8] == ["OS", "CPU", "Memory", "Disk", "DiskFormat", "Size", "Display",
                                                    "State"]


def test_access_date_moves_on_open_not_on_list(tart, vm):
    os.utime(tart.vm(vm), (1_000_000_000, 1_000_000_000))
    tart("list")
    assert tart.vm(vm).stat().st_atime == 1_000_000_000
    tart("get", vm)
    assert tart.vm(vm).stat().st_atime > time.time() - 60


def test_gc_removes_unlocked_tmp_entries_except_for_pull_and_clone(tart, vm):
    stale = tart.home / "tmp" / "STALE-UUID"
    stale.mkdir()
    tart("clone", vm, "vm2")
    assert stale.exists()
    tart("list")
    assert not stale.exists()


# --- clone, pull, delete, rename --------------------------------------------------------------

def test_clone_local_gets_new_mac_and_silently_overwrites(tart, vm):
    tart("create", "--linux", "target")
    (tart.vm("target") / "marker").touch()
    result = tart("clone", vm, "target")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (tart.vm("target") / "marker").exists()
    assert tart.config("target")["macAddress"] != tart.config(vm)["macAddress"]
    assert tart("clone", vm, "a/b").returncode == 64
    assert tart("clone", "nope", "x").stderr == 'the specified VM "nope" does not exist\n'


def test_clone_remote_pulls_then_later_clones_get_new_macs(tart):
    first = tart("clone", IMAGE, "mac1")
    assert first.returncode == 0
    assert first.stdout.startswith("pulling manifest...\npulling disk (")
    assert "pulling NVRAM..." in first.stdout and "pulling " + IMAGE not in first.stdout
    assert tart.config("mac1")["os"] == "darwin"
    second = tart("clone", IMAGE, "mac2")
    assert second.stdout == ""  # cached: no pull
    assert tart.config("mac2")["macAddress"] != tart.config("mac1")["macAddress"]
    tart("clone", "ghcr.io/cirruslabs/ubuntu:latest", "linux")
    assert tart.config("linux")["os"] == "linux"


def test_pull_outputs_and_local_name(tart, vm):
    result = tart("pull", IMAGE)
    assert result.stdout.startswith(f"pulling {IMAGE}...\npulling manifest...\n")
    assert tart("pull", IMAGE).stdout.endswith("image is already cached and linked!\n")
    assert tart("pull", vm).stdout == '"vm1" is a local image, nothing to pull here!\n'


def test_delete_many_names_stops_at_first_error(tart, vm):
    tart("create", "--linux", "vm2")
    result = tart("delete", vm, "nope", "vm2")
    assert (result.returncode, result.stderr) == (2, 'the specified VM "nope" does not exist\n')
    assert not tart.vm(vm).exists() and tart.vm("vm2").exists()
    tart("pull", IMAGE)
    assert tart("delete", IMAGE).returncode == 0
    assert tart.json("list", "--source", "oci") == []


def test_rename_errors_exit_64(tart, vm):
    tart("create", "--linux", "vm2")
    assert tart("rename", "nope", "x").stderr.startswith(
        "Error: failed to rename a non-existent local VM: nope\n")
    result = tart("rename", vm, "vm2")
    assert result.returncode == 64
    assert "failed to rename VM vm1, target VM vm2 already exists, delete it first!" in result.stderr
    assert tart("rename", vm, "x/y").returncode == 64
    assert tart("rename", vm, "vm3").returncode == 0 and tart.vm("vm3").is_dir()


# --- set ---------------------------------------------------------------------------------------

def test_set_resources_display_mac_and_refit(tart, vm):
    mac = tart.config(vm)["macAddress"]
    assert tart("set", vm, "--cpu", "2", "--memory", "2048", "--display", "1920x0pt", "--random-mac",
                "--display-refit").returncode == 0
    config = tart.config(vm)
    assert (config["cpuCount"], config["memorySize"]) == (2, 2048 * 1024 * 1024)
    assert config["display"] == {"width": 1920, "height": 768, "unit": "pt"}
    assert config["macAddress"] != mac and config["displayRefit"] is True
    assert tart.json("get", vm)["Display"] == "1920x768pt"
    tart("set", vm, "--cpu", "3")  # every set rewrites the tri-state refit field
    assert "displayRefit" not in tart.config(vm)


def test_set_minimums_for_macos_vms(tart):
    tart("clone", IMAGE, "mac")
    result = tart("set", "mac", "--cpu", "2")
    assert (result.returncode, result.stderr) == (
        1, "Error: LessThanMinimalResourcesError: VM should have 4 CPU cores at minimum (requested 2)\n")
    assert "of memory at minimum (requested 1048576)" in tart("set", "mac", "--memory", "1").stderr


def test_set_disk_size_only_grows(tart, vm):
    assert tart("set", vm, "--disk-size", "60").returncode == 0
    assert (tart.vm(vm) / "disk.img").stat().st_size == 60 * 10**9
    assert tart("set", vm, "--disk-size", "60").returncode == 0
    result = tart("set", vm, "--disk-size", "20")
    assert (result.returncode, result.stderr) == (
        1, "new disk size of 20 GB should be larger than the current disk size of 60 GB\n")


# --- run, lock-derived state, stop ---------------------------------------------------------------

def test_run_holds_fcntl_lock_and_second_run_exits_2(tart, vm):
    proc = tart.start_run(vm)
    assert lock_pid(tart.vm(vm)) == proc.pid
    assert state_of(tart, vm) == "running" and tart.json("get", vm)["Running"] is True
    result = tart("run", vm)
    assert (result.returncode, result.stderr) == (2, 'VM "vm1" is already running!\n')
    result = tart("delete", vm)
    assert (result.returncode, result.stderr) == (1, 'VM "vm1" is running\n')
    assert tart("set", vm, "--cpu", "2").returncode == 0  # no running check; lock survives the write
    assert lock_pid(tart.vm(vm)) == proc.pid


def test_kill_9_of_run_reads_stopped_at_once(tart, vm):
    proc = tart.start_run(vm)
    proc.kill()
    proc.wait()
    assert state_of(tart, vm) == "stopped"
    assert tart("stop", vm).returncode == 2


def test_stop_sends_sigint_and_run_exits_zero(tart, vm):
    proc = tart.start_run(vm)
    result = tart("stop", vm)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert proc.wait(timeout=5) == 0
    assert "Stopping VM..." in tart.run_log(vm)
    result = tart("stop", vm)
    assert (result.returncode, result.stderr) == (2, 'VM "vm1" is not running\n')


def test_stop_sigkills_a_holder_that_ignores_sigint(tart, vm):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, signal, struct, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0))\n"
        "time.sleep(60)\n"), str(tart.vm(vm) / "config.json")])
    tart.children.append(holder)
    wait_until(lambda: lock_pid(tart.vm(vm)) == holder.pid)
    started = time.monotonic()
    assert tart("stop", vm, "-t", "1").returncode == 0
    assert 0.9 < time.monotonic() - started < 5
    assert holder.wait(timeout=5) == -signal.SIGKILL


def test_sigusr2_requests_guest_shutdown(tart, vm):
    proc = tart.start_run(vm)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=5) == 0
    assert tart.run_log(vm) == "Requesting guest OS to stop...\nguest has stopped the virtual machine\n"


def test_sigterm_just_dies(tart, vm):
    proc = tart.start_run(vm)
    proc.terminate()
    assert proc.wait(timeout=5) == -signal.SIGTERM
    assert state_of(tart, vm) == "stopped"


def test_dir_shares(tart, vm, tmp_path):
    result = tart("run", vm, "--dir", str(tmp_path / "gone"))
    assert result.returncode == 1
    assert result.stderr.startswith('Error: Error Domain=VZErrorDomain Code=2 "A directory sharing device '
                                    'configuration is invalid."')
    result = tart("run", vm, "--dir", str(tmp_path), "--dir", f"b:{tmp_path}")
    assert result.returncode == 64
    assert result.stderr.startswith("Error: invalid --dir syntax: for multiple directory shares each one of "
                                    "them should be named\nUsage: tart <subcommand>")
    proc = tart.start_run(vm, f"--dir=a:{tmp_path}:ro,tag=build", "--dir", f"b:{tmp_path}:tag=build",
                          "--dir", str(tmp_path))
    assert proc.poll() is None and lock_pid(tart.vm(vm)) == proc.pid


def test_run_validation_errors(tart, vm):
    result = tart("run", vm, "--graphics", "--no-graphics")
    assert (result.returncode, result.stderr.splitlines()[0]) == (
        64, "Error: --graphics and --no-graphics are mutually exclusive")
    assert tart("run", vm, "--net-host", "--net-softnet-allow=0.0.0.0/0").returncode == 64


# --- ip and exec ------------------------------------------------------------------------------------

def test_ip_of_running_and_stopped_vm(tart, vm):
    result = tart("ip", vm)
    assert (result.returncode, result.stderr) == (1, "no IP address found, is your VM running?\n")
    tart.start_run(vm)
    assert tart("ip", vm, "--wait", "5", env={"FAKE_TART_IP": "192.168.64.7"}).stdout == "192.168.64.7\n"
    assert tart("ip", vm, "--resolver", "magic").returncode == 64


def test_ip_never_found_for_running_vm_b01(tart, vm):
    tart.start_run(vm)
    started = time.monotonic()
    result = tart("ip", vm, "--wait", "1", env={"FAKE_TART_NO_IP": "1"})
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "no IP address found\n")
    assert 0.9 < time.monotonic() - started < 4
    assert state_of(tart, vm) == "running"


def test_exec_exit_codes_and_missing_agent_b15(tart, vm):
    result = tart("exec", vm, "true")
    assert (result.returncode, result.stderr) == (2, 'VM "vm1" is not running\n')
    tart.start_run(vm)
    assert tart("exec", vm, "true").returncode == 0
    assert tart("exec", vm, "true", env={"FAKE_TART_EXEC": "3"}).returncode == 3
    host = tart("exec", vm, "sh", "-c", "echo out; exit 5", env={"FAKE_TART_EXEC": "host"})
    assert (host.returncode, host.stdout) == (5, "out\n")
    result = tart("exec", vm, "true", env={"FAKE_TART_EXEC": "noagent"})
    assert result.returncode == 1
    assert result.stderr.startswith("Failed to connect to the VM using its control socket: ")
    assert result.stderr.endswith(", is the Tart Guest Agent running?\n")


# --- faults: run failures (B10), crash, slow clone (B14), failed pulls (B16) -------------------

def test_run_vm_limit_lists_other_running_vms_after_holding_lock_b10(tart, vm):
    tart("create", "--linux", "a")
    tart("create", "--linux", "b")
    tart.start_run("a")
    tart.start_run("b")
    env = {**tart.env, "FAKE_TART_RUN_FAIL": "limit", "FAKE_TART_RUN_FAIL_HOLD": "1"}
    proc = subprocess.Popen([sys.executable, str(FAKE_TART), "run", vm], env=env, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: lock_pid(tart.vm(vm)) == proc.pid)  # reads running for a moment
    assert proc.wait(timeout=5) == 1
    assert proc.stderr.read() == "The number of VMs exceeds the system limit (other running VMs: a, b)\n"
    assert state_of(tart, vm) == "stopped"


def test_run_fails_to_start_b10_variant(tart, vm):
    result = tart("run", "--no-graphics", vm, env={"FAKE_TART_RUN_FAIL": "start", "FAKE_TART_RUN_FAIL_HOLD": "0"})
    assert result.returncode == 1
    assert result.stderr.startswith('Error Domain=VZErrorDomain Code=1 "The virtual machine failed to start."')


def test_run_crashes_after_n_seconds(tart, vm):
    proc = tart.start_run(vm, env={"FAKE_TART_RUN_EXIT_AFTER": "0.3"})
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert state_of(tart, vm) == "stopped"
    proc = tart.start_run(vm, env={"FAKE_TART_RUN_EXIT_AFTER": "0.1", "FAKE_TART_RUN_EXIT_MODE": "guest"})
    assert proc.wait(timeout=5) == 0


def test_slow_clone_holds_tmp_flock_and_ctrl_c_cleans_up_b14(tart, vm):
    env = {**tart.env, "FAKE_TART_CLONE_SLEEP": "30"}
    proc = subprocess.Popen([sys.executable, str(FAKE_TART), "clone", vm, "tmp-vm"], env=env,
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: any((tart.home / "tmp").iterdir()))
    time.sleep(0.2)
    tart("list")  # GC must leave the flocked copy alone
    assert len(list((tart.home / "tmp").iterdir())) == 1
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=5) == 1
    assert list((tart.home / "tmp").iterdir()) == [] and not tart.vm("tmp-vm").exists()


def test_remote_clone_disk_full_leaves_partial_tmp_b16a(tart):
    result = tart("clone", IMAGE, "base", env={"FAKE_TART_PULL_FAIL": "nospace"})
    assert result.returncode == 1
    assert result.stderr == 'Error: Error Domain=NSPOSIXErrorDomain Code=28 "No space left on device"\n'
    assert len(list((tart.home / "tmp").iterdir())) == 1 and not tart.vm("base").exists()
    tart("list")
    assert list((tart.home / "tmp").iterdir()) == []  # next command's GC


def test_remote_clone_disk_full_with_partial_vm_dir_b16a(tart):
    env = {"FAKE_TART_PULL_FAIL": "nospace", "FAKE_TART_PULL_PARTIAL_VM": "1"}
    assert tart("clone", IMAGE, "base", env=env).returncode == 1
    assert tart.vm("base").is_dir() and tart("list", "-q").stdout == ""
    assert tart("delete", "base").returncode == 2  # no config.json: tart cannot delete it
    assert tart("clone", IMAGE, "x", env={"FAKE_TART_PULL_FAIL": "crash"}).returncode == -signal.SIGABRT


@pytest.mark.parametrize(("kind", "needles"), [
    ("auth", ["Error: AuthFailed(why:", "403", "DENIED"]),
    ("ratelimit", ["Error: UnexpectedHTTPStatusCode(", "429 Too Many Requests"]),
])
def test_remote_clone_registry_errors_b16(tart, kind, needles):
    result = tart("clone", IMAGE, "base", env={"FAKE_TART_PULL_FAIL": kind})
    assert result.returncode == 1 and result.stdout == "pulling manifest...\n"
    assert all(needle in result.stderr for needle in needles)
    assert not tart.vm("base").exists() and tart.json("list") == []


def test_local_clone_disk_full(tart, vm):
    result = tart("clone", vm, "copy", env={"FAKE_TART_CLONE_FAIL": "nospace"})
    assert result.returncode == 1 and "isn’t enough space" in result.stderr
    assert not tart.vm("copy").exists()


# --- prune and suspend ----------------------------------------------------------------------------

def test_prune_vms_skips_running_ones(tart, vm):
    tart("create", "--linux", "idle")
    tart.start_run(vm)
    assert tart("prune").returncode == 64
    assert tart("prune", "--entries", "vms", "--older-than", "0").returncode == 0
    assert tart("list", "-q").stdout == "vm1\n"


def test_suspend_and_resume(tart):
    tart("clone", IMAGE, "mac")
    proc = tart.start_run("mac", "--suspendable")
    assert tart("suspend", "mac").returncode == 0
    assert proc.wait(timeout=5) == 0
    assert state_of(tart, "mac") == "suspended"
    assert tart("stop", "mac").returncode == 0 and state_of(tart, "mac") == "stopped"
