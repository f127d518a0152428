"""Where clod's files live. Every other module asks here, never guesses.

The checkout is found from this file's location, so scripts work when called
by absolute path, through a symlink on PATH, or from any working directory.
"""

import os
from pathlib import Path

from clod.errors import ClodError

ROOT = Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    """`CLOD_STATE_DIR`, else `state/` in the checkout. Created on first use."""
    configured = os.environ.get("CLOD_STATE_DIR")
    path = Path(configured).expanduser() if configured else ROOT / "state"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ClodError(
            f"cannot use {path} as clod's state directory: {err.strerror}", hint="point CLOD_STATE_DIR at a directory you can write"
        ) from None
    return path.resolve()


def state_path(*parts: str) -> Path:
    """A path under the state dir; its parent directory is created."""
    path = state_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def home() -> Path:
    return Path(os.path.expanduser("~")).resolve()
