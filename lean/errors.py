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


def _shown(path: object, limit: int = 80) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def path_error(error: OSError) -> LeanError | None:
    """One line for an OSError about a path the user named (a name longer than the filesystem allows, no
    permission, a file where a directory belongs, ...); None for one that names no path (a bug to show)."""
    import errno
    from pathlib import Path

    if error.filename is None:
        return None
    path = _shown(error.filename)
    if error.errno == errno.ENAMETOOLONG:
        return LeanError(f"path '{path}' is longer than the filesystem allows (255 bytes a name, 4096 a path): "
                         "choose a shorter name")
    if error.errno in (errno.EEXIST, errno.ENOTDIR) and not Path(error.filename).is_dir():
        return LeanError(f"'{path}' (or a folder above it) is a file where a directory is needed: choose another path")
    reason = error.strerror or first_line(error)
    return LeanError(f"cannot use '{path}': {reason}: check the path and its permissions")


def unknown_home(argv: list[str]) -> LeanError | None:
    """The `~user/...` argument whose user this machine does not know (pathlib's expanduser raises a bare
    RuntimeError without naming it), as one line; None when no argument is such a path."""
    import os

    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if value.startswith("~") and os.path.expanduser(value) == value:
            user = value[1:].split("/", 1)[0]
            return LeanError(f"'{_shown(value)}': there is no user '{user}' on this machine (or no home directory "
                             "is set): write the path out in full")
    return None
