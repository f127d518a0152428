"""Crash-safe JSON files under the state dir.

Writers take a lock (filelock: flock on an open descriptor, so the kernel drops
it when the holder dies - there is never a stale lock to delete by hand), then
write a temp file, fsync it and rename it over the old one. Readers need no
lock: a rename is atomic, so they see the old file or the new one, never half.
Every file carries `{"schema": N}`; a file we cannot read stops clod with its
name and how to recover, it is never silently reset.
"""

import json
import os
import tempfile
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


@contextmanager
def locked(name: str, timeout: float | None = None, purpose: str = "update clod's state"):
    """Hold the named lock (state/locks/NAME.lock) for the body. A live holder
    makes us wait up to `timeout` seconds, then fail naming its pid."""
    import filelock  # imported here: readers never pay for it

    path = state_path("locks", f"{name}.lock")
    lock = filelock.FileLock(
        path,
        timeout=lock_timeout() if timeout is None else timeout,
        fallback_to_soft=False,
        preserve_lock_file=True,
        on_acquired=_record_holder,
    )
    try:
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            # Busy: say who we wait for, then wait (bounded).
            from clod import log

            log.info(f"waiting for another clod command (pid {_read_holder(path)}) to finish before this one can {purpose} ...")
            lock.acquire()
    except filelock.Timeout:
        holder = _read_holder(path)
        raise ClodError(
            f"another clod command (pid {holder}) is still running and holds {path}, so this one could not {purpose}",
            hint=f"wait for it to finish, or stop it (kill {holder}); the lock is freed the moment it exits",
        ) from None
    try:
        yield
    finally:
        lock.release()


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
