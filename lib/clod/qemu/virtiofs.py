"""virtiofsd, one per mapped project, and how guest files get the host user's owner.

The guest user is uid/gid 1000 (GUEST_UID). virtiofsd creates files as the
uid the guest asks for, so run plainly it would create uid-1000 files on the
host. Instead it runs in a user namespace where the host user who runs clod
(root in CI, anyone else on a desktop) *is* uid 1000:

    unshare --user --map-user=1000 --map-group=1000 --keep-caps -- virtiofsd ...

As root that is all. A normal user's namespace gets its maps from
newuidmap/newgidmap instead (with one subordinate gid, so that setgroups(),
which virtiofsd calls, stays allowed) and hands virtiofsd a listening socket,
since it could not write its pid file under /run: see _spawn_unprivileged. --keep-caps hands the
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


def subgid_start() -> int:
    """The first id of this user's /etc/subgid range (the same entry mmdebstrap needs)."""
    import pwd

    names = {pwd.getpwuid(os.getuid()).pw_name, str(os.getuid())}
    try:
        lines = Path("/etc/subgid").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in names and fields[2].isdigit() and int(fields[2]) > 0:
            return int(fields[1])
    user = pwd.getpwuid(os.getuid()).pw_name
    raise ClodError(
        f"sharing a directory as a normal user needs an /etc/subgid entry for {user}",
        hint=f"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}",
    )


def unprivileged_argv(virtiofsd: str, fd: int, source: Path) -> list[str]:
    """Not root: the id maps are written from outside by newuidmap/newgidmap
    (a subordinate gid beside our own keeps setgroups(), which virtiofsd
    calls, allowed), so virtiofsd waits for them; it gets an already
    listening socket (--fd), which needs no pid file under /run."""
    wait = 'while [ -z "$(cat /proc/self/gid_map)" ]; do sleep 0.02; done; exec "$@"'
    argv = virtiofsd_argv(virtiofsd, Path("unused"), source)
    options = argv[argv.index(virtiofsd) + 2 :]
    return ["unshare", "--user", "--keep-caps", "--", "sh", "-c", wait, "sh", virtiofsd, f"--fd={fd}", *options]


def _spawn_unprivileged(socket_path: Path, source: Path, log_file) -> subprocess.Popen:
    import socket

    first_subgid = subgid_start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(socket_path))
        listener.listen(1)
        fd = listener.fileno()
        child = proc.spawn(unprivileged_argv(virtiofsd_path(), fd, source), stdout=log_file, pass_fds=(fd,))
        try:
            for argv in (
                ["newuidmap", str(child.pid), str(GUEST_UID), str(os.getuid()), "1"],
                ["newgidmap", str(child.pid), str(GUEST_GID), str(os.getgid()), "1", "0", str(first_subgid), "1"],
            ):
                subprocess.run(argv, check=True, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as err:
            stop(child)
            raise ClodError(
                f"could not set up the user namespace for virtiofsd ({err})",
                hint="sudo apt-get install uidmap; see the VM's helpers.log",
            ) from None
    return child


@contextmanager
def running_virtiofsd(socket_path: Path, source: Path, log_file):
    """Start virtiofsd for `source`, wait until its socket exists, yield the
    process, and always stop it."""
    socket_path.unlink(missing_ok=True)
    if os.getuid() == 0:
        child = proc.spawn(virtiofsd_argv(virtiofsd_path(), socket_path, source), stdout=log_file)
    else:
        child = _spawn_unprivileged(socket_path, source, log_file)
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
