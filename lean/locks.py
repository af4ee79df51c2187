"""Locks on what lean writes: a second run on the same output fails at once instead of racing.

A lock is a hidden file beside the target (`.NAME.lean-lock` in the target's parent) held with an
advisory `flock`: the kernel drops it when the process dies, so a killed run never leaves a stale
lock that blocks the next one. The file holds the owner's pid for the error message and is removed
on release. After taking the lock we check that the path still names the file we locked (another
run may have removed it between our open and our flock); if not, we try again.

    with output_lock(out):            # raises LeanError at once when another run holds it
        ...write out...
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lean.errors import LeanError

try:
    import fcntl
except ImportError:  # Windows: fall back to exclusive creation (a killed run leaves the file behind)
    fcntl = None

LOCK_SUFFIX = ".lean-lock"
# Lock files this process holds, passed to the processes it starts: a child doing its parent's work
# (lean bench building a runs-cache entry in a subprocess, whose step locks the same output) takes
# the lock as already its own instead of failing against its parent.
HELD_ENV = "LEAN_HELD_LOCKS"
_OWN: set[str] = set()  # the lock files this process took itself (a second take here must fail)


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file that guards `target`: a hidden sibling, so the target itself stays untouched."""
    target = Path(target).expanduser().absolute()
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _open(path: Path, target: Path, what: str) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeanError(f"cannot lock {what} '{target}': {e.strerror or e} ({path.parent}): "
                        f"choose a path in a writable directory") from None
    try:
        flags = os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL)
        return os.open(path, flags, 0o644)
    except FileExistsError:  # only without fcntl
        raise LeanError(f"{what} '{target}' is in use by another lean run{_holder(path)}: wait for it to finish, "
                        f"or remove {path} if no run is left") from None
    except OSError as e:
        raise LeanError(f"cannot lock {what} '{target}': {e.strerror or e}: choose a path in a writable directory") from None


def _acquire(path: Path, target: Path, what: str) -> int:
    for _ in range(10):
        fd = _open(path, target, what)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LeanError(f"{what} '{target}' is in use by another lean run{_holder(path)}: "
                            f"wait for it to finish or choose another path") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder before us removed the file after we opened it: lock the new one
    raise LeanError(f"cannot lock {what} '{target}': its lock file {path} keeps changing")


@contextmanager
def output_lock(target: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Hold the lock on `target` for the block; LeanError at once if another process holds it.

    `what` names the target in the message ("output", "checkpoint directory", "bench run", ...).
    """
    target = Path(target).expanduser().absolute()
    path = lock_path(target)
    held = [p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p]
    if str(path) in held and str(path) not in _OWN:  # a parent process holds it for us
        yield path
        return
    fd = _acquire(path, target, what)
    _OWN.add(str(path))
    os.environ[HELD_ENV] = os.pathsep.join(held + [str(path)])
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield path
    finally:
        _OWN.discard(str(path))
        os.environ[HELD_ENV] = os.pathsep.join(p for p in os.environ.get(HELD_ENV, "").split(os.pathsep)
                                               if p and p != str(path))
        try:
            os.unlink(path)  # before closing, so no other run can lock this inode and lose it
        except FileNotFoundError:
            pass
        os.close(fd)
