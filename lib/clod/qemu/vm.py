"""VM directories under state/qemu/vms/<NAME>/ and whether their VM runs.

A VM is running exactly when its supervisor holds the exclusive flock on
run.lock; run.json (pid, port, dirs) is only read for a running VM.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from clod import paths, store
from clod.errors import ClodError

SCHEMA = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def vms_dir() -> Path:
    path = paths.state_dir() / "qemu" / "vms"
    path.mkdir(parents=True, exist_ok=True)
    return path


def vm_dir(name: str) -> Path:
    if not NAME_PATTERN.match(name):
        raise ClodError(f"{name!r} is not a valid VM name", hint="use letters, digits, '.', '_' and '-'", exit_code=2)
    return vms_dir() / name


def missing(name: str) -> ClodError:
    return ClodError(f'the specified VM "{name}" does not exist', hint="see the VMs with: qemu-wrap list", exit_code=2)


def existing_dir(name: str) -> Path:
    path = vm_dir(name)
    if not (path / "config.json").is_file():
        raise missing(name)
    return path


@contextmanager
def new_vm_dir(name: str):
    """Yield a temporary directory beside the VMs that becomes vms/NAME when
    the body succeeds; any failure (or Ctrl-C) removes it and nothing else."""
    final = vm_dir(name)
    if final.exists():
        raise ClodError(f'a VM named "{name}" already exists', hint=f"delete it first: qemu-wrap delete {name}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=vms_dir()))
    try:
        yield tmp
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def names() -> list[str]:
    return sorted(p.name for p in vms_dir().iterdir() if (p / "config.json").is_file())


def read_config(path: Path) -> dict:
    return store.read_json(path / "config.json", SCHEMA) or {}


def write_config(path: Path, **changes):
    config = {**read_config(path), **changes, "schema": SCHEMA}
    store.write_json(path / "config.json", config)


def is_running(path: Path) -> bool:
    lock = path / "run.lock"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our shared lock, if we got it
    return False


def run_facts(path: Path) -> dict | None:
    if not is_running(path):
        return None
    return store.read_json(path / "run.json", SCHEMA)


def supervisor_pid(path: Path) -> int | None:
    """The supervisor's pid, checked against /proc: a recycled pid that is
    not our supervisor for this VM directory is never signalled."""
    facts = run_facts(path)
    if not facts:
        return None
    pid = facts.get("pid")
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"clod.qemu.supervise" in cmdline and os.fsencode(str(path)) in cmdline:
        return pid
    return None


def wait_stopped(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def request_stop(path: Path) -> bool:
    pid = supervisor_pid(path)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    return True
