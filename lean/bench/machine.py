"""The machine's state around the timing phase: load average, running tasks, CPU frequency.

    log = MachineLog()
    log.sample("before"); ...; log.sample("during"); ...; log.sample("after")
    results["run"]["machine"] = log.record()

Read from /proc/loadavg and the CPU frequency files where Linux has them (elsewhere os.getloadavg and
nothing), so a run's results say how busy the machine was while it measured. Parent side of lean.bench;
imports nothing else of the package.
"""

from __future__ import annotations

import glob
import os
import statistics
from typing import Any


def cpu_mhz() -> float | None:
    """The mean current frequency of the CPUs (MHz), where readable; None elsewhere."""
    values = []
    for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            values.append(int(open(path).read()) / 1000)
        except (OSError, ValueError):
            continue
    if not values:
        try:
            with open("/proc/cpuinfo") as f:
                values = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        except (OSError, ValueError, IndexError):
            values = []
    return round(statistics.fmean(values), 1) if values else None


def sample() -> dict[str, Any]:
    """{load1, load5, running (tasks runnable at this instant, this process included), cpu_mhz}."""
    out: dict[str, Any] = {}
    try:
        with open("/proc/loadavg") as f:
            fields = f.read().split()
        out.update(load1=float(fields[0]), load5=float(fields[1]), running=int(fields[3].split("/")[0]))
    except (OSError, ValueError, IndexError):
        try:
            out.update(load1=round(os.getloadavg()[0], 2), load5=round(os.getloadavg()[1], 2))
        except (OSError, AttributeError):  # no load average on this platform
            pass
    mhz = cpu_mhz()
    if mhz is not None:
        out["cpu_mhz"] = mhz
    return out


class MachineLog:
    """Samples taken before, during and after the timing phase, and their summary for results.json."""

    def __init__(self):
        self.samples: dict[str, list[dict[str, Any]]] = {"before": [], "during": [], "after": []}

    def sample(self, when: str) -> None:
        self.samples[when].append(sample())

    def record(self) -> dict[str, Any]:
        """{cpus, before, during {samples, load1_max, load1_median, running_max, running_median, cpu_mhz_min,
        cpu_mhz_max},
        after}; before is the first sample taken before, after the last one after."""
        out: dict[str, Any] = {"cpus": os.cpu_count()}
        if self.samples["before"]:
            out["before"] = self.samples["before"][0]
        during = self.samples["during"]
        if during:
            loads, running, mhz = ([s[k] for s in during if k in s] for k in ("load1", "running", "cpu_mhz"))
            summary: dict[str, Any] = {"samples": len(during)}
            if loads:
                summary.update(load1_max=max(loads), load1_median=round(statistics.median(loads), 2))
            if running:
                summary.update(running_max=max(running), running_median=statistics.median(running))
            if mhz:
                summary.update(cpu_mhz_min=min(mhz), cpu_mhz_max=max(mhz))
            out["during"] = summary
        if self.samples["after"]:
            out["after"] = self.samples["after"][-1]
        return out
