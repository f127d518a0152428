"""virtiofsd, one per mapped project, and how guest files get the host user's owner.

The guest user is uid/gid 1000 (GUEST_UID). virtiofsd creates files as the
uid the guest asks for, so run plainly it would create uid-1000 files on the
host. Instead it runs in a user namespace where the host user who runs clod
(root in CI, anyone else on a desktop) *is* uid 1000:

    unshare --user --map-user=1000 --map-group=1000 --keep-caps -- virtiofsd ...

A single-id mapping of one's own uid needs no privilege and no /etc/subuid,
so this is the same for root and for a normal user. --keep-caps hands the
namespace's capabilities to virtiofsd (as ambient capabilities) so it can
sandbox itself and switch file-system ids. The result:
  - a file the guest user creates belongs to the host user on the host;
  - the host user's files look owned by the guest user in the guest, so they
    are writable there;
  - files of other host users look owned by `nobody` and keep their modes;
  - guest root (sudo) cannot create files in a share: uid 0 has no mapping
    (EOVERFLOW/EINVAL), which is the price of not giving it host-root files.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from clod import proc
from clod.errors import ClodError

VIRTIOFSD_CANDIDATES = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd")
GUEST_UID = 1000
GUEST_GID = 1000
START_TIMEOUT = 10.0


def virtiofsd_path() -> str:
    for candidate in VIRTIOFSD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    raise ClodError(
        "virtiofsd was not found (looked in " + ", ".join(VIRTIOFSD_CANDIDATES) + ")",
        hint="sudo apt-get install qemu-system-common (Debian 12) or virtiofsd",
    )


def virtiofsd_argv(virtiofsd: str, socket_path: Path, source: Path) -> list[str]:
    cmd = ["unshare"]
    cmd += ["--user"]
    cmd += [f"--map-user={GUEST_UID}"]
    cmd += [f"--map-group={GUEST_GID}"]
    cmd += ["--keep-caps"]
    cmd += ["--"]
    cmd += [virtiofsd]
    cmd += [f"--socket-path={socket_path}"]
    cmd += ["-o", f"source={fuse_escape(str(source))}"]
    cmd += ["-o", "cache=auto"]
    cmd += ["-o", "sandbox=namespace"]
    cmd += ["-o", "xattr"]
    # The host user's own limit on open files is what it may raise to.
    cmd += ["--rlimit-nofile=0"]
    return cmd


def fuse_escape(value: str) -> str:
    """A value inside a FUSE -o list: ',' separates options, so a project
    path with a comma (or a backslash) is escaped with a backslash."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


@contextmanager
def running_virtiofsd(socket_path: Path, source: Path, log_file):
    """Start virtiofsd for `source`, wait until its socket exists, yield the
    process, and always stop it."""
    socket_path.unlink(missing_ok=True)
    child = proc.spawn(virtiofsd_argv(virtiofsd_path(), socket_path, source), stdout=log_file)
    try:
        wait_for_socket(child, socket_path, f"virtiofsd for {source}")
        yield child
    finally:
        stop(child)
        socket_path.unlink(missing_ok=True)


def wait_for_socket(child: subprocess.Popen, socket_path: Path, what: str, timeout: float = START_TIMEOUT):
    # No event tells us when a helper has bound its socket; poll, bounded.
    deadline = time.monotonic() + timeout
    while not socket_path.exists():
        if child.poll() is not None:
            raise ClodError(f"{what} exited with status {child.returncode} before it was ready", hint="see the VM's helpers.log")
        if time.monotonic() > deadline:
            raise ClodError(f"{what} did not create {socket_path} within {timeout:g}s", hint="see the VM's helpers.log")
        time.sleep(0.02)


def stop(child: subprocess.Popen, grace: float = 3.0):
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
