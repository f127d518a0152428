"""Shared fixtures for every test.

Sections:
  1. where things are       ROOT, BIN, LIB, FAKES
  2. isolation              every test gets its own HOME and CLOD_STATE_DIR (autouse)
  3. running the scripts    the `clod` helper: bin/<script> as a subprocess
  4. project directories    `ct`: a scratch tree for directories to map (like /tmp/ct in CASES.md)

Add new fixtures in a section of their own at the end, with a line above saying
what they are for.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

# ---------------------------------------------------------------- 1. where things are

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bin"
LIB = ROOT / "lib"
FAKES = ROOT / "tests" / "fakes"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

# Environment variables that change what clod does; none may leak in from the
# developer's shell (their real state dir, a real CLOD_MEMORY, ...).
CLOD_VARIABLES = (
    "CLOD_STATE_DIR",
    "CLOD_BACKEND",
    "CLOD_CPUS",
    "CLOD_MEMORY",
    "CLOD_DEBUG",
    "CLOD_HOST_SYSTEM",
    "CLOD_LOCK_TIMEOUT",
    "TART_HOME",
    "PYTHONPATH",
    "XDG_CONFIG_HOME",
)

# ---------------------------------------------------------------- 2. isolation


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """HOME and CLOD_STATE_DIR in tmp_path, NO_COLOR set, PATH kept.

    Applied to os.environ (for tests that call the library in-process) and
    returned as a dict (the base environment of every subprocess). HOME is a
    real directory, so "refuse $HOME" can be tested against it.
    """
    home = tmp_path / "home"
    state = tmp_path / "state"
    home.mkdir()
    for name in CLOD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLOD_STATE_DIR", str(state))
    monkeypatch.setenv("NO_COLOR", "1")
    return dict(os.environ)


@pytest.fixture
def home(isolated_env: dict[str, str]) -> Path:
    return Path(isolated_env["HOME"])


@pytest.fixture
def state_dir(isolated_env: dict[str, str]) -> Path:
    return Path(isolated_env["CLOD_STATE_DIR"])


# ---------------------------------------------------------------- 3. running the scripts


class Result(NamedTuple):
    """What a script did; unpacks as (returncode, stdout, stderr)."""

    returncode: int
    stdout: str | bytes
    stderr: str | bytes


def run_script(
    base_env: dict[str, str],
    script: str,
    *argv: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str | None] | None = None,
    check: bool | int | None = None,
    binary: bool = False,
    stdin: str | None = None,
    timeout: float = 30,
) -> Result:
    """Run bin/<script> (or a path to any script) with argv.

    env: variables to add to the isolated environment (None removes one).
    check: None = any exit; True = must exit 0; False = must exit non-zero;
    an int = must exit with exactly that code. The assertion shows stderr.
    binary: return stdout/stderr as bytes (for byte-exact round trips).
    """
    full_env = dict(base_env)
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    program = script if os.sep in str(script) else str(BIN / script)
    done = subprocess.run(
        [program, *map(os.fsdecode, argv)],
        cwd=cwd,
        env=full_env,
        input=None if stdin is None else stdin.encode(),
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    out, err = done.stdout, done.stderr
    if not binary:
        out, err = os.fsdecode(out), os.fsdecode(err)
    result = Result(done.returncode, out, err)
    described = f"{script} {' '.join(map(os.fsdecode, argv))} exited {done.returncode}; stderr:\n{os.fsdecode(done.stderr)}"
    if check is True:
        assert done.returncode == 0, described
    elif check is False:
        assert done.returncode != 0, described
    elif isinstance(check, int):
        assert done.returncode == check, described
    return result


@pytest.fixture
def clod(isolated_env: dict[str, str]) -> Callable[..., Result]:
    """clod("clod-add", path, check=True) -> (returncode, stdout, stderr)."""

    def run(script: str, *argv, **kwargs) -> Result:
        return run_script(isolated_env, script, *argv, **kwargs)

    return run


@pytest.fixture
def python_env(isolated_env: dict[str, str]) -> dict[str, str]:
    """The isolated environment plus PYTHONPATH=lib, for child Pythons that
    import clod directly (e.g. to hold a lock)."""
    return {**isolated_env, "PYTHONPATH": str(LIB)}


# ---------------------------------------------------------------- 4. project directories


@pytest.fixture
def ct(tmp_path: Path) -> Path:
    """A scratch tree for directories to map: outside HOME and the state dir."""
    path = tmp_path / "ct"
    path.mkdir()
    return path


def projects_file(state: Path) -> Path:
    return state / "projects.json"


def read_bytes_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


assert sys.version_info >= (3, 11), "clod's tests need Python >= 3.11"
