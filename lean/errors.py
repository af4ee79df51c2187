"""The one error type lean raises for bad input: the CLI prints its message on one line and exits 2."""


class LeanError(Exception):
    """A user-facing error: what was wrong and what to do. Never wraps a traceback."""

    exit_code = 2


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an exception's message (libraries put the reason there), at most
    `limit` characters (torch.onnx's can run to whole graphs); the exception's type name when it has none."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(error).__name__
