"""The one error type that reaches the user, and `die()` to raise it."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ClodError(Exception):
    """A failure we can explain: a message naming the thing, and the next step.

    The top-level handler in clod.cli prints `clod: <message>` and `hint: <hint>`
    on stderr and exits with `exit_code`, without a traceback.
    """

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


def die(message: str, hint: str | None = None, exit_code: int = EXIT_ERROR):
    raise ClodError(message, hint, exit_code)
