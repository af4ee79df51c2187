"""Memory of the measuring subprocess: its resident set now and at its peak.

Child side of lean.bench (a tracker the scenarios and the worker call).
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path


def rss_peak_mb() -> float:
    """This process's peak RSS. On Linux the high-water mark of its own memory (VmHWM): ru_maxrss also
    counts the parent's RSS at the fork before the exec (a linear row spawned by a large harness reported
    the harness's peak, not its own). Elsewhere ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)


def rss_now_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return rss_peak_mb()
