"""Building clod's images, for either driver: base (slow) then dst (fast).

Every build goes into a temporary VM that is put in place only at the very
end, so the previous image stays usable through any failure or Ctrl-C. The
names of the VMs a build creates are written down *before* they are created
(state/builds/); cleanup deletes exactly those and nothing else, with further
Ctrl-Cs ignored until it is done. A build killed with -9 leaves its record
behind, and the next build removes what it lists.

The stamp (state/stamps/<backend>-<kind>.json) is written last. Make compares
its time with the inputs'; `check_stamps` drops a stamp whose VM is gone.
"""

import hashlib
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from clod import log, paths, store
from clod.errors import ClodError

SCHEMA = 1
KINDS = ("base", "dst")


def stamp_path(backend: str, kind: str) -> Path:
    return paths.state_path("stamps", f"{backend}-{kind}.json")


def read_stamp(backend: str, kind: str) -> dict | None:
    return store.read_json(stamp_path(backend, kind), SCHEMA)


def write_stamp(backend: str, kind: str, vm: str, inputs: str, **facts):
    store.write_json(
        stamp_path(backend, kind),
        {"schema": SCHEMA, "vm": vm, "inputs": inputs, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **facts},
    )


def check_stamps(driver) -> list[str]:
    """Drop each stamp whose VM no longer exists (and, with a base gone, the
    dst built on it). Returns what was dropped."""
    dropped = []
    for kind in KINDS:
        stamp = read_stamp(driver.name, kind)
        gone = stamp and not driver.exists(stamp["vm"])
        if gone or (kind == "dst" and "base" in dropped):
            stamp_path(driver.name, kind).unlink(missing_ok=True)
            dropped.append(kind)
    return dropped


# ---------------------------------------------------------------- inputs


def tree_hash(*roots: Path) -> str:
    """A hash of the files under roots (paths and contents), for the stamp."""
    digest = hashlib.sha256()
    for root in roots:
        if not root.exists():
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def user_home_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(config) / "clod" / "home"


def home_layers() -> list[Path]:
    """The guest home, lowest layer first: clod's, the checkout's user layer,
    then the user's own config. A later layer's file wins."""
    return [paths.ROOT / "guest-setup" / "home", paths.ROOT / "guest-setup" / "user", user_home_dir()]


def merged_home(into: Path) -> Path:
    for layer in home_layers():
        if layer.is_dir():
            shutil.copytree(layer, into, symlinks=True, dirs_exist_ok=True)
    return into


def git_identity() -> dict[str, str]:
    from clod import proc

    def config(key):
        result = proc.run(["git", "config", "--global", key], check=False)
        return result.stdout.strip()

    try:
        return {"CLOD_GIT_NAME": config("user.name"), "CLOD_GIT_EMAIL": config("user.email")}
    except ClodError:  # no git on the host: the guest simply gets no identity
        return {"CLOD_GIT_NAME": "", "CLOD_GIT_EMAIL": ""}


# ---------------------------------------------------------------- cleanup


class BuildRecord:
    """The VMs this build created, on disk before they exist."""

    def __init__(self):
        self.path = paths.state_path("builds", f"{os.getpid()}.json")
        self.names: list[str] = []

    def add(self, name: str):
        self.names.append(name)
        store.write_json(self.path, {"schema": SCHEMA, "pid": os.getpid(), "vms": self.names})

    def discard(self, name: str):
        self.names.remove(name)
        store.write_json(self.path, {"schema": SCHEMA, "pid": os.getpid(), "vms": self.names})

    def close(self):
        self.path.unlink(missing_ok=True)


def _delete_vm(driver, name: str):
    try:
        if driver.exists(name):
            driver.stop(name, timeout=10)
            driver.delete(name)
            log.info(f"removed the unfinished VM {name}")
        elif hasattr(driver, "remove_partial"):
            driver.remove_partial(name)  # what a clone that died part-way left
    except ClodError as err:
        log.warn(f"could not remove {name}: {err.message}; remove it yourself ({driver.name} delete {name})")


def sweep_dead_builds(driver):
    """Remove VMs listed by builds that died (kill -9, power loss). Called with
    the build lock held, so every record found belongs to a dead build."""
    for record in sorted(paths.state_path("builds", "x").parent.glob("*.json")):
        data = store.read_json(record, SCHEMA) or {}
        if data.get("pid") == os.getpid():
            continue
        for name in data.get("vms", []):
            log.info(f"cleaning up after an interrupted build: {name}")
            _delete_vm(driver, name)
        record.unlink(missing_ok=True)


class _Terminated(BaseException):
    """SIGTERM, raised so that cleanup runs as it does for Ctrl-C."""


@contextmanager
def build_guard(driver):
    """Hold the build lock; on any failure, Ctrl-C or SIGTERM delete the VMs
    this build recorded, ignoring further interrupts until that is done."""
    with store.locked("image-build", purpose="build an image"):
        sweep_dead_builds(driver)
        record = BuildRecord()

        interrupted = []

        def on_term(signum, frame):
            raise _Terminated()

        def on_int(signum, frame):
            # Noted, because the build's child may die of the same Ctrl-C and
            # report a failure before our KeyboardInterrupt surfaces.
            interrupted.append(signum)
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_term)
        previous_int = signal.signal(signal.SIGINT, on_int)
        try:
            yield record
        except BaseException as failure:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if record.names:
                log.info("cleaning up what this build created (Ctrl-C is ignored until it is done) ...")
            for name in reversed(list(record.names)):
                _delete_vm(driver, name)
            signal.signal(signal.SIGINT, previous_int)
            if isinstance(failure, _Terminated) or (interrupted and not isinstance(failure, KeyboardInterrupt)):
                raise KeyboardInterrupt from None
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
            record.close()


def temp_name(final: str) -> str:
    return f"{final}-build-{os.getpid()}"


# ---------------------------------------------------------------- builds


def base_inputs(driver) -> str:
    setup = paths.ROOT / "guest-setup"
    settings = "|".join(os.environ.get(k, "") for k in ("MACOS_VERSION", "MACOS_FLAVOR", "DEBIAN_SUITE", "CLAUDE_CODE_VERSION", "ALLOW_SUDO"))
    os_dir = "macos" if driver.guest_os == "macos" else "debian"
    return tree_hash(setup / os_dir, setup / "common") + ":" + hashlib.sha256(settings.encode()).hexdigest()[:8]


def build_base(driver):
    final = driver.base_name
    inputs = base_inputs(driver)
    started = time.monotonic()
    with build_guard(driver) as record:
        tmp = temp_name(final)
        record.add(tmp)
        driver.build_base(tmp)
        driver.replace(tmp, final)
        record.discard(tmp)
        _move_pin(tmp, final)
    seconds = time.monotonic() - started
    write_stamp(driver.name, "base", final, inputs, seconds=round(seconds, 1))
    # A new base invalidates dst; Make knows, but a direct call should too.
    stamp_path(driver.name, "dst").unlink(missing_ok=True)
    log.info(f"base image {final} ready in {seconds:.0f}s")


def build_dst(driver):
    base_stamp = read_stamp(driver.name, "base")
    if not base_stamp or not driver.exists(driver.base_name):
        raise ClodError(f"the base image {driver.base_name} does not exist", hint="build it first: make base")
    final = driver.dst_name
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="clod-home-") as staging:
        home = merged_home(Path(staging) / "home")
        inputs = tree_hash(home, paths.ROOT / "guest-setup" / "common") + ":" + base_stamp["inputs"]
        with build_guard(driver) as record:
            if driver.exists(final) and driver.state(final) == "running":
                # Replacing it would end every session in it (an agent at
                # work, say): only with the user's yes. Without one the VM
                # keeps running the older image, and no stamp is written, so
                # the build happens at the next start.
                if not log.ask(f"{final} is running an older destination image; stop it now to rebuild? Sessions in it will end."):
                    log.warn(f"{final} is running, so it keeps its older home for now; your changes apply after: clod stop, then clod run")
                    return
                log.info(f"stopping {final} to replace it with the new build")
                driver.stop(final)
            tmp = temp_name(final)
            record.add(tmp)
            driver.build_dst(driver.base_name, tmp, home, git_identity())
            driver.replace(tmp, final)
            record.discard(tmp)
            _move_pin(tmp, final)
    seconds = time.monotonic() - started
    write_stamp(driver.name, "dst", final, inputs, base=base_stamp["built"], seconds=round(seconds, 1))
    log.info(f"destination image {final} ready in {seconds:.0f}s")


def _move_pin(tmp: str, final: str):
    from clod import ssh

    try:
        ssh.copy_pin(tmp, final)
    except ClodError:
        return  # this driver pins by another route (qemu pins at boot)
    ssh.unpin(tmp)
