"""Launching subprocesses: the measuring and building children, their environment, stopping them.

    child = Child(["-m", "lean.bench.worker", spec, result], log, child_env(threads), on_note)
    reply = child.ask(protocol.time_request(1, 128, 4), timeout_s=60)

Parent side of lean.bench. Each child runs in its own process group (so a stop reaches every thread
and grandchild), its stdout read by a thread: protocol replies go to a queue, notes to a callback,
the rest to its log file. On Linux a child dies with its parent (die_with_parent).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from lean.bench import protocol

# glibc malloc settings of a measuring subprocess with measure.reuse_memory (see MeasureConfig): no
# mmap-ed blocks (each would be unmapped on free and faulted in again on the next call), no trimming of
# the heap's top, and one arena (so that no thread's arena runs into its 64 MiB limit without mmap).
# Other C libraries ignore them.
REUSE_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_ARENA_MAX": "1"}


def child_env(threads: int | None, reuse_memory: bool = False) -> dict[str, str]:
    # PYTHONSAFEPATH (3.11+): `python -m` must not put the working directory first on sys.path, or a
    # run from a source checkout makes its kernels/ folder the `kernels` package that transformers and
    # bitsandbytes probe for
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    if reuse_memory:
        env.update(REUSE_MEMORY_ENV)
    return env


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux SIGKILL the child when the process that started it dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG), so a killed `lean bench` leaves no measuring or building child behind; None
    elsewhere. Linux ties the signal to the starting thread: lean starts children from the main thread.
    libc is resolved here, in the parent: between fork and exec the child makes one plain system call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before the request was made
            os._exit(1)

    return preexec


def stop_child(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGINT first (a step then removes its temp dir), SIGKILL if it has not exited after `grace_s`."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def run_child(args: list[str], log: Path, timeout_s: float | None, on_line: Callable[[str], None],
              env: dict[str, str], tick: Callable[[], None] | None = None) -> tuple[int, bool]:
    """Run `python args...` in its own process group, its output to `log`; lines starting with '@'
    go to `on_line`. Returns (returncode, timed_out); Ctrl-C stops the child and re-raises."""
    child = Child(args, log, env, on_line)
    start, timed_out = time.monotonic(), False
    try:
        while child.proc.poll() is None:
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                timed_out = True
                child.stop()
                break
            if tick:
                tick()
            try:
                child.proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        child.stop()
        raise
    finally:
        child.close()
    return child.proc.returncode, timed_out


def crash_text(returncode: int, log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    tail = [line for line in lines if line.strip()][-1:]
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited with status {returncode}"
    return f"the subprocess {how}" + (f"; last output: {tail[0].strip()[:300]}" if tail else "")


class Child:
    """`python args...` in its own process group. Protocol replies (READY, TIMES: a measuring subprocess
    that stays loaded for interleaved timing, lean.bench.latency.serve_latency) wait in a queue, other
    notes ('@' lines) go to `on_line`, the rest to `log`."""

    TIMEOUT = "timeout"

    def __init__(self, args: list[str], log: Path, env: dict[str, str], on_line: Callable[[str], None]):
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log.open("w")
        self.proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, bufsize=1,
                                     errors="replace", preexec_fn=die_with_parent())
        self.replies: queue.Queue = queue.Queue()
        self.on_line = on_line
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if protocol.is_reply(line):
                self.replies.put(line.strip())
            elif protocol.is_note(line):
                self.on_line(line.strip())
            else:
                self.log_file.write(line)
                self.log_file.flush()
        self.replies.put(None)  # the process closed its output: it ended

    def reply(self, timeout_s: float | None) -> str | None:
        """The next reply line; None once the process has ended; TIMEOUT (after stopping it) past timeout_s."""
        try:
            return self.replies.get(timeout=timeout_s)
        except queue.Empty:
            self.stop()
            return self.TIMEOUT

    def ask(self, line: str, timeout_s: float | None) -> str | None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        return self.reply(timeout_s)

    def go(self) -> bool:
        """Tell a subprocess started early (--wait) to start; False when it has ended meanwhile."""
        try:
            self.proc.stdin.write(protocol.GO + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def end(self) -> None:
        """Say END (once): the process writes its result and exits, while the harness goes on."""
        if self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.write(protocol.END + "\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def finish(self, timeout_s: float | None) -> tuple[int, bool]:
        """Say END and wait for the process to write its result and exit: (returncode, timed_out)."""
        timed_out = False
        self.end()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop()
        self.close()
        return self.proc.returncode, timed_out

    def stop(self) -> None:
        stop_child(self.proc, grace_s=5.0)

    def close(self) -> None:
        self.reader.join(timeout=5)
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.log_file.close()


def terminate_as_interrupt():
    """SIGTERM (kill, a CI timeout) stops the run like Ctrl-C: the child is stopped, finished rows stay.
    -> the previous handler (None off the main thread, where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def process_cpu_ns(pid: int) -> int | None:
    """CPU time used so far by every thread of a process (Linux /proc schedstat, ns); None elsewhere."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        return sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0]) for t in tasks)
    except (OSError, ValueError, IndexError):
        return None


def wait_until_idle(pid: int, window_s: float = 0.005, busy_share: float = 0.05, max_s: float = 1.0) -> float:
    """Wait until a process uses under `busy_share` of one core over `window_s` (its worker threads stopped
    spinning), at most `max_s`; -> seconds waited. Without /proc, waits one window."""
    start = time.perf_counter()
    before = process_cpu_ns(pid)
    while True:
        time.sleep(window_s)
        now = process_cpu_ns(pid)
        if before is None or now is None or now - before < busy_share * window_s * 1e9 \
                or time.perf_counter() - start >= max_s:
            return time.perf_counter() - start
        before = now
