"""Which VM tool this host uses: Tart on macOS, QEMU on Linux.

CLOD_BACKEND=tart|qemu overrides the choice (the tests use it to drive the
fake tart on Linux). Only the name is decided here; the drivers are imported
by whoever needs one, so light scripts stay light.
"""

import os
import platform

from clod.errors import ClodError

BACKENDS = {"tart": "macos", "qemu": "linux"}


def name() -> str:
    chosen = os.environ.get("CLOD_BACKEND") or ("tart" if platform.system() == "Darwin" else "qemu")
    if chosen not in BACKENDS:
        raise ClodError(f"CLOD_BACKEND={chosen!r} is not one of: {', '.join(BACKENDS)}", hint="unset CLOD_BACKEND", exit_code=2)
    return chosen


def guest_os() -> str:
    return BACKENDS[name()]
