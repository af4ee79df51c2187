"""The one error type lean raises for bad input: the CLI prints its message on one line and exits 2."""


class LeanError(Exception):
    """A user-facing error: what was wrong and what to do. Never wraps a traceback."""

    exit_code = 2


def first_line(error: BaseException | str | None, limit: int = 300) -> str:
    """The first non-blank line of an exception's message or of an error text (libraries put the reason
    there), at most `limit` characters (torch.onnx's can run to whole graphs); when there is none, the
    exception's type name, or "no reason given" for a text."""
    text = str(error or "").strip()  # stripped, its first line is not blank
    if text:
        return text.splitlines()[0][:limit]
    return type(error).__name__ if isinstance(error, BaseException) else "no reason given"
