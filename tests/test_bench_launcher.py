"""Tests for lean.bench.launcher: the children's environment, stopping, the idle wait."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH needs Python 3.11")
def test_children_started_from_a_checkout_do_not_import_its_kernels_folder():
    # transformers and bitsandbytes probe for the Hub's `kernels` package; a child started with `python -m`
    # from the repository root must not find the checkout's kernels/ (installed as lean.kernels) instead
    import subprocess

    from lean.bench.launcher import child_env

    root = Path(__file__).resolve().parent.parent
    assert (root / "kernels" / "__init__.py").is_file()
    probe = "import importlib.util; s = importlib.util.find_spec('kernels'); print(s.origin if s else None)"
    env = {k: v for k, v in child_env(None).items() if k != "PYTHONPATH"}  # other tests may have set it
    found = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert found != str(root / "kernels" / "__init__.py")
    plain = {k: v for k, v in env.items() if k != "PYTHONSAFEPATH"}
    bare = subprocess.run([sys.executable, "-c", probe], cwd=root, env=plain, capture_output=True, text=True,
                          check=True)
    assert bare.stdout.strip() == str(root / "kernels" / "__init__.py")  # what the variable prevents


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads per-thread CPU time from Linux /proc")
def test_wait_until_idle_waits_for_a_spinning_process_to_stop():
    # the next variant's clock starts only once the previous one's threads stopped spinning
    import subprocess

    from lean.bench.launcher import process_cpu_ns, wait_until_idle

    # the spinner says when its loop starts (a loaded CI machine can take long to start an interpreter)
    spin = ("import time\nprint('spinning', flush=True)\nend = time.perf_counter() + 0.4\n"
            "while time.perf_counter() < end: pass\ntime.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "spinning"
        started = time.perf_counter()
        assert process_cpu_ns(proc.pid) > 0
        # 50 ms windows: with two test workers on two cores the spinner can go unscheduled for a few
        # milliseconds, but not for most of 50 ms
        waited = wait_until_idle(proc.pid, window_s=0.05, max_s=5.0)
        assert 0.15 < waited < 3.0  # the spinning lasts 0.4 s from its first line
        time.sleep(max(0.0, started + 1.0 - time.perf_counter()))
        assert wait_until_idle(proc.pid, window_s=0.05) < 0.5  # idle now: one window
    finally:
        proc.kill()
        proc.wait()


def test_child_env_keeps_freed_memory_only_when_asked():
    from lean.bench.launcher import REUSE_MEMORY_ENV, child_env

    env = child_env(2, reuse_memory=True)
    assert env["OMP_NUM_THREADS"] == "2" and env["PYTHONSAFEPATH"] == "1"
    assert {k: env[k] for k in REUSE_MEMORY_ENV} == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40),
                                                      "MALLOC_ARENA_MAX": "1"}
    assert not set(REUSE_MEMORY_ENV) & set(child_env(2)) - set(os.environ)
