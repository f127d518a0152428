"""The process that owns a running VM: `python -m clod.qemu.supervise VM_DIR`.

Started detached by QemuDriver.run. For its whole life it holds an exclusive
flock on VM_DIR/run.lock (so a kill -9 frees it and `list` reads the truth
from the lock, never from a pid file), and it owns virtiofsd (one per share),
passt and qemu in one ExitStack: when qemu exits, for whatever reason, the
helpers are stopped and the sockets removed. SIGTERM asks the guest to power
off over the control port and kills qemu after launch.json's stop_timeout.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from clod import proc, store
from clod.qemu import argv as qemu_argv
from clod.qemu import net, virtiofs

EXIT_ALREADY_RUNNING = 3


def hold_lock(vm_dir: Path) -> int | None:
    fd = os.open(vm_dir / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + 2.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            # A reader probing the lock holds it shared for a moment; a running
            # supervisor holds it for good.
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


@contextmanager
def running_passt(log_file):
    """passt wired to one end of a socketpair; yields the other end for QEMU.
    passt exits by itself when QEMU closes its end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = proc.spawn(net.passt_argv(theirs.fileno()), stdout=log_file, pass_fds=(theirs.fileno(),))
    theirs.close()
    try:
        yield ours
    finally:
        ours.close()
        virtiofs.stop(child)


def connect_ctl(path: Path, qemu: subprocess.Popen, timeout: float = 10.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(str(path))
            return conn
        except OSError:
            conn.close()
            if qemu.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def main(vm_dir: Path) -> int:
    lock_fd = hold_lock(vm_dir)
    if lock_fd is None:
        print(f"{vm_dir.name} is already running", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    launch = json.loads((vm_dir / "launch.json").read_text())
    log_file = open(vm_dir / "helpers.log", "a", buffering=1)
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    (vm_dir / "serial.log").write_bytes(b"")
    with ExitStack() as stack:
        shares = []
        for index, (name, path) in enumerate(launch["dirs"]):
            share = qemu_argv.Share(tag=f"{qemu_argv.TAG_PREFIX}{index}", name=name, socket=vm_dir / f"fs{index}.sock")
            stack.enter_context(virtiofs.running_virtiofsd(share.socket, Path(path), log_file))
            shares.append(share)
        net_end = stack.enter_context(running_passt(log_file))
        port = net.free_port()
        spec = qemu_argv.VmSpec(
            name=launch["name"],
            kernel=vm_dir / "vmlinuz",
            initrd=vm_dir / "initrd.img",
            disk=vm_dir / "disk.qcow2",
            seed=vm_dir / "seed.img",
            cpus=launch["cpus"],
            memory_mib=launch["memory_mib"],
            accel=launch["accel"],
            net_fd=net_end.fileno(),
            ssh_port=port,
            ctl_socket=vm_dir / "ctl.sock",
            qmp_socket=vm_dir / "qmp.sock",
            serial_log=vm_dir / "serial.log",
            shares=tuple(shares),
            graphics=launch.get("graphics", False),
            plain_boot=launch.get("plain_boot", False),
        )
        for stale in (spec.ctl_socket, spec.qmp_socket):
            stale.unlink(missing_ok=True)
        qemu = proc.spawn(qemu_argv.qemu_argv(spec), stdout=log_file, new_session=False, pass_fds=(net_end.fileno(),))
        stack.callback(virtiofs.stop, qemu, 1.0)
        facts = {"schema": 1, "pid": os.getpid(), "qemu_pid": qemu.pid, "port": port, "dirs": launch["dirs"],
                 "accel": spec.accel, "graphics": spec.graphics, "started": time.time(), "ready": False}  # fmt: skip
        store.write_json(vm_dir / "run.json", facts)
        ctl = connect_ctl(spec.ctl_socket, qemu) if not spec.plain_boot else None
        serve(ctl, qemu, facts, vm_dir, stop_requested)
    (vm_dir / "run.json").unlink(missing_ok=True)
    return 0


def stop_timeout(vm_dir: Path) -> float:
    """The grace period the stopping command asked for (it writes launch.json
    just before it signals us), 30 s if none."""
    try:
        return float(json.loads((vm_dir / "launch.json").read_text()).get("stop_timeout", 30))
    except (OSError, ValueError):
        return 30.0


def qmp_powerdown(qmp_socket: Path):
    """ACPI power button through QMP: how a guest booted plainly (systemd)
    is asked to shut down, as a person pressing the button would."""
    with socket.socket(socket.AF_UNIX) as qmp:
        qmp.settimeout(5)
        qmp.connect(str(qmp_socket))
        qmp.recv(4096)  # greeting
        for command in (b'{"execute": "qmp_capabilities"}', b'{"execute": "system_powerdown"}'):
            qmp.sendall(command + b"\n")
            qmp.recv(4096)


def serve(ctl, qemu, facts, vm_dir: Path, stop_requested: list):
    """Wait for qemu to exit, marking the VM ready when the guest says so and
    passing a stop request on to the guest."""
    buffered = b""
    poweroff_sent_at = None
    grace = 30.0
    if ctl is not None:
        ctl.settimeout(0.2)
    while qemu.poll() is None:
        if stop_requested and poweroff_sent_at is None:
            poweroff_sent_at = time.monotonic()
            grace = stop_timeout(vm_dir)
            try:
                if ctl is not None:
                    ctl.sendall(b"poweroff\n")
                else:
                    qmp_powerdown(vm_dir / "qmp.sock")
            except OSError:
                pass  # the kill after the grace period still stops it
        if poweroff_sent_at is not None and time.monotonic() - poweroff_sent_at > grace:
            qemu.kill()
            break
        if ctl is None:
            time.sleep(0.2)
            continue
        try:
            chunk = ctl.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            time.sleep(0.2)
            continue
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            if line.strip() == b"ready" and not facts["ready"]:
                facts["ready"] = True
                facts["ready_at"] = time.time()
                store.write_json(vm_dir / "run.json", facts)
    qemu.wait()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
