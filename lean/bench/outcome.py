"""A variant's row from how its measuring subprocess ended: its result file, its exit, a timeout.

Parent side of lean.bench.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from lean.bench.launcher import crash_text
from lean.bench.results import STATUSES


def read_result(result_file: Path) -> dict[str, Any]:
    """The subprocess's result file; {} when it is missing or cut short (it was killed mid-write)."""
    try:
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    except (ValueError, OSError):
        return {}
    return result if isinstance(result, dict) else {}


def collect_row(row: dict[str, Any], result_file: Path, log: Path, code: int, timed_out: bool, phase: str,
                timeout_s: float, wall_s: float, final: bool = True) -> dict[str, Any]:
    """Fill `row` from the measuring subprocess's result file and how it ended."""
    result = read_result(result_file)
    for key in ("quality", "generation", "latency", "memory", "size", "threads", "note"):
        if key in result:
            row[key] = result[key]
    row["timing"].update(result.get("timing", {}))
    row["timing"]["wall_s"] = round(wall_s, 2)
    row["log"] = str(log)
    if not final:
        return row
    if timed_out:
        row.update(status="timeout", phase="measure",
                   error=f"exceeded the {timeout_s:g} s per-variant timeout during: {phase}")
    elif result.get("status") in STATUSES and result["status"] != "ok":
        row.update(status=result["status"], error=result.get("error"), phase="measure")
    elif result.get("status") != "ok":
        status = "oom" if code == -signal.SIGKILL else "failed"
        row.update(status=status, phase="measure", error=crash_text(code, log) + (
            " (SIGKILL without a timeout: most likely the out-of-memory killer)" if status == "oom" else ""))
    return row
