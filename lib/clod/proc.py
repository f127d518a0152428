"""The one place clod starts other programs.

Argument lists only (never a shell), stdin from /dev/null unless asked, the
argv logged under --debug, and a failure turned into one readable line:
`"tart clone" exited 1: <the tail of its stderr>`.
"""

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

from clod import log
from clod.errors import ClodError

STDERR_TAIL_LINES = 12


class CommandFailed(ClodError):
    """A program exited non-zero; `stderr` and `returncode` are kept for callers
    that recognise specific failures (tart's exit codes, ssh's 255)."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f'"{describe(argv)}" exited {returncode}: {tail(stderr) or "(no output)"}')


def describe(argv: Sequence[str]) -> str:
    """`tart clone` for ['tart', 'clone', ...]: the program and its verb."""
    name = os.path.basename(argv[0])
    verb = next((a for a in argv[1:2] if not a.startswith("-")), "")
    return f"{name} {verb}".strip()


def tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run argv to completion. With capture=False the child writes straight to
    our stdout/stderr (for long steps the user should watch). Bytes `input`
    (a tar stream, say) is passed as is; output is always text."""
    argv = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(argv))
    # subprocess.run makes the pipe for `input`; otherwise nothing is read.
    stdin = None if input is not None else subprocess.DEVNULL
    try:
        result = subprocess.run(
            argv,
            stdin=stdin,
            input=input.encode() if isinstance(input, str) else input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
        )
    except FileNotFoundError:
        raise ClodError(f"{argv[0]}: command not found", hint=install_hint(argv[0])) from None
    except subprocess.TimeoutExpired:
        raise ClodError(f'"{describe(argv)}" did not finish within {timeout:g}s') from None
    for stream in ("stdout", "stderr"):
        if isinstance(getattr(result, stream), bytes):
            setattr(result, stream, getattr(result, stream).decode(errors="surrogateescape"))
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stdout or "", result.stderr or "")
    return result


def spawn(argv: Sequence[str], *, stdout, stderr=subprocess.STDOUT, env=None, cwd=None, pass_fds=(), new_session=True):
    """Start a long-lived child (a VM, a helper daemon). Output goes to a file,
    never to a pipe that could close under it; it gets its own session so a
    Ctrl-C at the terminal reaches clod first, which then stops it on purpose."""
    argv = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(argv) + " &")
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            pass_fds=pass_fds,
            start_new_session=new_session,
        )
    except FileNotFoundError:
        raise ClodError(f"{argv[0]}: command not found", hint=install_hint(argv[0])) from None


def install_hint(program: str) -> str:
    hints = {
        "tart": "install Tart: brew install cirruslabs/cli/tart",
        "qemu-system-x86_64": "install QEMU: sudo apt-get install qemu-system-x86 qemu-utils",
        "qemu-system-aarch64": "install QEMU: sudo apt-get install qemu-system-arm qemu-utils",
        "qemu-img": "install QEMU: sudo apt-get install qemu-utils",
        "mmdebstrap": "sudo apt-get install mmdebstrap",
        "passt": "sudo apt-get install passt",
        "ssh": "install OpenSSH: sudo apt-get install openssh-client",
        "ssh-keygen": "install OpenSSH: sudo apt-get install openssh-client",
    }
    return hints.get(os.path.basename(program), f"install {program} and make sure it is on PATH")


def run_foreground(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd=None) -> int:
    """Run argv attached to our terminal and return its exit status.

    A Ctrl-C reaches the child too (same process group); we then wait for it
    to finish its own cleanup instead of killing it, as subprocess.run would,
    and re-raise KeyboardInterrupt once it is done.
    """
    import signal

    argv = [os.fspath(a) for a in argv]
    log.debug("+ " + shlex.join(argv))
    try:
        child = subprocess.Popen(argv, env=dict(env) if env is not None else None, cwd=cwd)
    except FileNotFoundError:
        raise ClodError(f"{argv[0]}: command not found", hint=install_hint(argv[0])) from None
    interrupted = False
    while True:
        try:
            status = child.wait()
            break
        except KeyboardInterrupt:
            interrupted = True
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon the cleanup
    if interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    return status
