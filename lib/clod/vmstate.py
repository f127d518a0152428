"""What clod decided about each running VM: one record per VM in
state/vms/<name>.json (how it was started: shares, display mode, pid, log).

The VM tool stays the source of truth for whether the VM runs; a record is
only read for a VM the tool reports running, and dropped when it stops.
"""

import time

from clod import paths, store

SCHEMA = 1


def _path(name: str):
    return paths.state_path("vms", f"{name}.json")


def record(name: str, **facts):
    with store.locked(f"vm-{name}"):
        store.write_json(_path(name), {"schema": SCHEMA, "vm": name, "started": time.time(), **facts})


def load(name: str) -> dict | None:
    return store.read_json(_path(name), SCHEMA)


def forget(name: str):
    with store.locked(f"vm-{name}"):
        _path(name).unlink(missing_ok=True)
