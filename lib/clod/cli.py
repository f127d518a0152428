"""The shared front of every bin/ script: docopt parsing, -q/-v/--debug, and the
one top-level handler that turns errors into exit codes.

Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted; a child's exit code (the
remote command's, say) passes through as the handler's return value.
"""

import os
import re
import sys
from collections.abc import Callable

from clod import log
from clod.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, ClodError


def parse(doc: str, argv: list[str] | None = None) -> dict:
    from docopt import DocoptExit, docopt

    try:
        return docopt(doc, argv, default_help=True)
    except DocoptExit as usage:
        text = str(usage)
        if text.startswith("Warning: found unmatched"):
            # docopt-ng's wording shows its internals ([Argument(None, 'x')]): say it plainly.
            first, _, rest = text.partition("\n")
            extra = ", ".join(re.findall(r"'((?:[^'\\]|\\.)*)'", first)) or first
            text = f"unexpected argument(s): {extra}\n{rest}"
        print(text, file=sys.stderr)
        sys.exit(EXIT_USAGE)


def verbosity(args: dict) -> int:
    if args.get("--debug") or os.environ.get("CLOD_DEBUG"):
        return log.DEBUG
    if args.get("--quiet"):
        return log.QUIET
    if args.get("--verbose"):
        return log.VERBOSE
    return log.NORMAL


def main(doc: str, handler: Callable[[dict], int | None], prog: str, argv: list[str] | None = None):
    """Parse argv with `doc`, run `handler(args)`, and exit with its status."""
    args = parse(doc, argv)
    log.configure(verbosity(args), prog)
    try:
        status = handler(args)
    except ClodError as err:
        log.error(err.message, err.hint)
        _traceback_if_debugging()
        status = err.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        status = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our stdout went away (`| head`); that is not an error.
        _silence_stdout()
        status = 0
    except Exception as err:  # a bug in clod: say so, keep the traceback for --debug
        log.error(f"internal error: {type(err).__name__}: {err}", "run again with --debug and report the traceback")
        _traceback_if_debugging()
        status = EXIT_ERROR
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    sys.exit(status or 0)


def _traceback_if_debugging():
    if log.level >= log.DEBUG:
        import traceback  # only here: it costs start-up time every script would pay

        traceback.print_exc()


def _silence_stdout():
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
