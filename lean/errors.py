"""The one error type lean raises for bad input: the CLI prints its message on one line and exits 2."""


class LeanError(Exception):
    """A user-facing error: what was wrong and what to do. Never wraps a traceback."""

    exit_code = 2
