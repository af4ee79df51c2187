"""Reports of a bench run: the ratios against the baseline, results.json, results.csv, report.md, pareto.png.

    from lean.bench.report import finalize, write_reports
    write_reports(finalize(results), "runs/bench/default-20250101-120000")

`finalize` computes every ratio against the run's baseline (speedup per latency cell with its
interval, memory and weight ratios, accuracy delta, the LM figures) from figures taken within the
same run on the same machine. A reader of runs: it imports the bottom of lean.bench and the other
readers only. The results.json schema is documented in docs/bench.md.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from lean.bench.figures import mb, peak_memory_mb, row_named
from lean.bench.markdown import to_markdown
from lean.bench.plot import pareto_png
from lean.bench.report_lm import lm_ratios
from lean.bench.reliability import (
    MAX_DRIFT,
    MIN_QUIET_ROUNDS,
    busy_reasons,
    cell_reasons,
    order_notes,
    set_aside,
    speedup_reasons,
)
from lean.bench.stats import MIN_INTERVAL_ROUNDS, interval_rounds, speedup_interval
from lean.bench.terminal import print_row, results_table  # noqa: F401  (the CLI's names for them)

CSV_COLUMNS = ["variant", "status", "error", "accuracy", "macro_f1", "accuracy_delta", "batch_size", "seq_length",
               "median_ms", "p90_ms", "p99_ms", "count", "throughput_sps", "speedup", "peak_rss_mb", "bare_rss_mb",
               "model_rss_mb", "cuda_peak_mb", "memory_ratio", "weights_mb", "weights_ratio", "params", "build_s",
               "wall_s", "steps", "unreliable", "order"]


def _put(cell: dict[str, Any], key: str, value: Any) -> None:
    """cell[key] = value, or no such key when value is empty (a figure recomputed on every call)."""
    if value:
        cell[key] = value
    else:
        cell.pop(key, None)


def _cell_speedup(cell: dict[str, Any], ref: dict[str, Any] | None, is_base: bool, min_rounds: int) -> None:
    """A cell's speedup over the baseline's cell, its interval (or why it has none) and why it is
    unreliable (`unreliable`, a reason; the baseline's own cells by their rounds and drift)."""
    cell["speedup"] = round(ref["median_ms"] / cell["median_ms"], 4) if ref and cell.get("median_ms") else None
    timed_against_base = cell["speedup"] and not is_base
    interval = speedup_interval(ref.get("visits"), cell.get("visits")) if timed_against_base else None
    _put(cell, "speedup_interval", interval)
    n = interval_rounds(ref.get("visits"), cell.get("visits")) if timed_against_base and cell.get("visits") else None
    _put(cell, "interval_note", None if interval or n is None else
         f"{n} quiet round{'' if n == 1 else 's'}: too few for an interval (at least {MIN_INTERVAL_ROUNDS})")
    if not cell.get("median_ms"):
        reasons = []
    elif is_base or ref is None:
        reasons = cell_reasons(cell, min_rounds, MAX_DRIFT)
    else:
        reasons = speedup_reasons(cell, ref, min_rounds, MAX_DRIFT)
    _put(cell, "unreliable", "; ".join(reasons))


def finalize(results: dict[str, Any]) -> dict[str, Any]:
    """Add ratios against the baseline to every measured row (in place; recomputed on every call), with
    the reliability of each cell (lean.bench.reliability) and the run's share of rounds set aside."""
    base = row_named(results, results.get("baseline"))
    base_ok = base is not None and base.get("status") == "ok"
    base_cells = {(c["batch_size"], c["seq_length"]): c for c in (base or {}).get("latency", []) if "median_ms" in c}
    run = results.get("run")
    min_rounds = (run or {}).get("min_quiet_rounds") or MIN_QUIET_ROUNDS
    for row in results["variants"]:
        notes = order_notes(row.get("latency") or [])
        for cell in row.get("latency", []):
            ref = base_cells.get((cell["batch_size"], cell["seq_length"])) if base_ok else None
            _cell_speedup(cell, ref, row is base, min_rounds)
            _put(cell, "order", notes.get((cell["batch_size"], cell["seq_length"])))
        ratios: dict[str, Any] = {}
        if base_ok and row.get("status") == "ok":
            mine, theirs = peak_memory_mb(row), peak_memory_mb(base)
            ratios["memory_ratio"] = round(mine / theirs, 4) if mine and theirs else None
            mine_model = (row.get("memory") or {}).get("model_rss_mb")
            theirs_model = (base.get("memory") or {}).get("model_rss_mb")
            ratios["model_memory_ratio"] = round(mine_model / theirs_model, 4) \
                if mine_model and theirs_model and theirs_model > 0 else None
            w, bw = (row.get("size") or {}).get("weights_bytes"), (base.get("size") or {}).get("weights_bytes")
            ratios["weights_ratio"] = round(w / bw, 4) if w and bw else None
            a, ba = (row.get("quality") or {}).get("accuracy"), (base.get("quality") or {}).get("accuracy")
            ratios["accuracy_delta"] = round(a - ba, 6) if a is not None and ba is not None else None
            if (results.get("task") or {}).get("kind") == "lm":  # perplexity, decode speed, greedy agreement
                ratios.update(lm_ratios(row, base))
        row["vs_baseline"] = ratios
    if run is not None:
        _put(run, "set_aside", set_aside(results))
        _put(run, "busy", busy_reasons(results))
    return results


# ---- files ---------------------------------------------------------------------------------------------

def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_reports(results: dict[str, Any], out: str | Path) -> None:
    """Write results.json, results.csv, report.md and pareto.png into `out` (each replaced atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    _atomic_write(out / "results.csv", to_csv(results))
    _atomic_write(out / "report.md", to_markdown(results))
    _atomic_write(out / "pareto.png", pareto_png(results))


def to_csv(results: dict[str, Any]) -> str:
    """One line per (variant, latency cell); a variant without cells (failed, skipped) gets one line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in results["variants"]:
        quality, memory, size = row.get("quality") or {}, row.get("memory") or {}, row.get("size") or {}
        ratios = row.get("vs_baseline") or {}
        common = {"variant": row["name"], "status": row["status"], "error": row.get("error") or "",
                  "accuracy": quality.get("accuracy"), "macro_f1": quality.get("macro_f1"),
                  "accuracy_delta": ratios.get("accuracy_delta"), "peak_rss_mb": memory.get("peak_rss_mb"),
                  "bare_rss_mb": memory.get("bare_rss_mb"), "model_rss_mb": memory.get("model_rss_mb"),
                  "cuda_peak_mb": memory.get("cuda_peak_mb"), "memory_ratio": ratios.get("memory_ratio"),
                  "weights_mb": mb(size.get("weights_bytes")), "weights_ratio": ratios.get("weights_ratio"),
                  "params": size.get("params"), "build_s": (row.get("timing") or {}).get("build_s"),
                  "wall_s": (row.get("timing") or {}).get("wall_s"),
                  "steps": " > ".join(next(iter(s)) for s in row["config"].get("steps", []))}
        cells = [c for c in row.get("latency", []) if "median_ms" in c]
        for cell in cells or [{}]:
            writer.writerow(common | {k: cell.get(k) for k in ("batch_size", "seq_length", "median_ms", "p90_ms",
                                                                 "p99_ms", "count", "throughput_sps", "speedup",
                                                                 "unreliable", "order")})
    return buffer.getvalue()
