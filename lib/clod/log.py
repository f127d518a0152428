"""Messages for people, on stderr; stdout is kept for data.

Verbosity is set once by clod.cli from -q/-v/--debug. NO_COLOR (any value)
turns colour off; colour is only used when stderr is a terminal.
"""

import os
import sys
import time
from contextlib import contextmanager

QUIET, NORMAL, VERBOSE, DEBUG = 0, 1, 2, 3
level = NORMAL
program = os.path.basename(sys.argv[0]) or "clod"


def configure(verbosity: int, prog: str | None = None):
    global level, program
    level = verbosity
    if prog:
        program = prog


def _color(code: str, text: str) -> str:
    if os.environ.get("NO_COLOR") is not None or not sys.stderr.isatty():
        return text
    return f"\033[{code}m{text}\033[0m"


def _emit(text: str):
    print(text, file=sys.stderr, flush=True)


def error(message: str, hint: str | None = None):
    _emit(f"{_color('1;31', program + ':')} {message}")
    if hint:
        _emit(f"{_color('33', 'hint:')} {hint}")


def warn(message: str):
    if level >= QUIET:
        _emit(f"{_color('33', program + ': warning:')} {message}")


def info(message: str):
    if level >= NORMAL:
        _emit(f"{_color('1', '==>')} {message}")


def verbose(message: str):
    if level >= VERBOSE:
        _emit(message)


def debug(message: str):
    if level >= DEBUG:
        _emit(_color("2", message))


def ask(question: str) -> bool:
    """A yes/no question on the terminal; without one the answer is no, so
    nothing disruptive happens in scripts and pipelines."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


@contextmanager
def step(what: str):
    """Log a long step and, when it ends, how long it took."""
    info(what + " ...")
    start = time.monotonic()
    yield
    info(f"{what}: done in {time.monotonic() - start:.1f}s")
