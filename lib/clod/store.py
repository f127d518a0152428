"""Crash-safe JSON files under the state dir.

Writers take a lock (flock on an open descriptor, so the kernel drops it
when the holder dies - there is never a stale lock to delete by hand), then
write a temp file, fsync it and rename it over the old one. Readers need no
lock: a rename is atomic, so they see the old file or the new one, never half.
Every file carries `{"schema": N}`; a file we cannot read stops clod with its
name and how to recover, it is never silently reset.
"""

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from clod.errors import ClodError
from clod.paths import state_path

DEFAULT_LOCK_TIMEOUT = 60.0


def lock_timeout() -> float:
    value = os.environ.get("CLOD_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT)
    try:
        return float(value)
    except ValueError:
        raise ClodError(f"CLOD_LOCK_TIMEOUT={value!r} is not a number of seconds", hint="unset it, or set e.g. CLOD_LOCK_TIMEOUT=60") from None


def _record_holder(fd: int):
    # The lock file's content is only a note for waiters ("held by pid N"); the
    # lock itself is the flock, which dies with its holder.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def locked(name: str, timeout: float | None = None, purpose: str = "update clod's state"):
    """Hold the named lock (state/locks/NAME.lock) for the body. A live holder
    makes us wait up to `timeout` seconds, then fail naming its pid.

    A plain flock on a close-on-exec descriptor: the kernel releases it when
    we close it or die, and child processes never inherit it. (The filelock
    package does the same, but importing it costs each script 40-80 ms.)
    """
    path = state_path("locks", f"{name}.lock")
    limit = lock_timeout() if timeout is None else timeout
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not _try_lock(fd):
            from clod import log

            log.info(f"waiting for another clod command (pid {_read_holder(path)}) to finish before this one can {purpose} ...")
            deadline = time.monotonic() + limit
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    holder = _read_holder(path)
                    raise ClodError(
                        f"another clod command (pid {holder}) is still running and holds {path}, so this one could not {purpose}",
                        hint=f"wait for it to finish, or stop it (kill {holder}); the lock is freed the moment it exits",
                    )
                time.sleep(0.05)
        _record_holder(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def read_json(path: Path, schema: int, default=None):
    """The file's data, or `default` if it does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    except OSError as err:
        raise ClodError(f"cannot read {path}: {err.strerror}", hint=f"check the permissions of {path.parent}") from None
    except UnicodeDecodeError:
        raise corrupt(path, "it is not valid UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise corrupt(path, f"it is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
        raise corrupt(path, "it has no schema version")
    if data["schema"] > schema:
        raise ClodError(
            f"{path} was written by a newer clod (schema {data['schema']}, this one knows {schema})",
            hint="update this checkout (git pull), or point CLOD_STATE_DIR at another directory",
        )
    return data


def corrupt(path: Path, why: str) -> ClodError:
    return ClodError(
        f"{path} is damaged: {why}",
        hint=f"look at it, fix it by hand, or move it aside (mv '{path}' '{path}.bad') to start that part afresh",
    )


def write_json(path: Path, data: dict):
    """Atomically replace `path` with `data` (temp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: importing tempfile costs every script ~8 ms.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, ensure_ascii=False)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    _remove_orphans(path)


def _remove_orphans(path: Path):
    """Temp files of writers that were killed mid-write (kill -9, power loss)."""
    for orphan in path.parent.glob(f".{path.name}.*.tmp"):
        pid = orphan.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            orphan.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(directory: Path):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _suppress_oserror():
    try:
        yield
    except OSError:
        pass
