"""Output locks: a second holder fails at once with one clear line; a dead holder blocks nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lean.errors import LeanError
from lean.locks import lock_path, output_lock

HOLD = """
import sys, time
from lean.locks import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(target):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_fails_at_once_and_names_the_pid(tmp_path):
    target = tmp_path / "out"
    proc = _holder(target)
    try:
        start = time.perf_counter()
        with pytest.raises(LeanError, match=rf"output '.*out' is in use by another lean run \(pid {proc.pid}\)"):
            with output_lock(target):
                pass
        assert time.perf_counter() - start < 5
        assert not target.exists()  # the lock never creates or touches the target itself
    finally:
        proc.kill()
        proc.wait()


def test_killed_holder_leaves_nothing_that_blocks(tmp_path):
    target = tmp_path / "out"
    proc = _holder(target)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_path(target).exists()  # the file stays, but the kernel dropped the flock
    with output_lock(target) as path:
        assert path == lock_path(target)
        assert path.read_text() == str(os.getpid())
    assert not lock_path(target).exists()


def test_release_removes_the_lock_file_and_allows_the_next(tmp_path):
    target = tmp_path / "out"
    with output_lock(target, what="checkpoint directory"):
        with pytest.raises(LeanError, match="checkpoint directory"):
            with output_lock(target, what="checkpoint directory"):
                pass
    assert not lock_path(target).exists()
    with output_lock(target):
        pass


def test_lock_under_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    with pytest.raises(LeanError, match="cannot lock output"):
        with output_lock(blocker / "out"):
            pass
    assert blocker.read_text() == "keep me"


def test_a_child_process_works_under_its_parents_lock(tmp_path):
    """A subprocess started while the lock is held does the holder's work: it may take the same lock."""
    target = tmp_path / "out"
    child = "import sys\nfrom lean.locks import output_lock\nwith output_lock(sys.argv[1]):\n    print('inside')\n"
    with output_lock(target):
        res = subprocess.run([sys.executable, "-c", child, str(target)], capture_output=True, text=True)
        assert res.returncode == 0 and res.stdout.strip() == "inside", res.stderr
        assert lock_path(target).exists()  # the child did not release the parent's lock
    assert not lock_path(target).exists()
    assert str(lock_path(target)) not in os.environ.get("LEAN_HELD_LOCKS", "")
    proc = _holder(target)  # an unrelated process still fails at once
    try:
        with pytest.raises(LeanError, match="in use"):
            with output_lock(target):
                pass
    finally:
        proc.kill()
        proc.wait()
