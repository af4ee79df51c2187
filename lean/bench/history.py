"""How this run's baseline and speedups ran against earlier runs of the same suite on the same machine.

    note_machine_state(results, runs_dir)   # results["run"]["machine_state"]; the run joins the history

A shared machine (a cloud VM) can stay in a slow state for a whole run: on a 2-vCPU VM the baseline's
batch-1 calls once ran 25% slower, and ONNX int8's 70% slower, in every round of a 2-minute run.
Within that run every round was as slow as the others, so the quiet-round logic (lean.bench.stats)
had nothing quieter to compare with, and its batch-1 speedups read 20 to 35% low against the runs
before it. Only other runs can show that. So each finished run appends its baseline's median per
latency cell, and every variant's speedup per cell, to RUNS_DIR/history.jsonl, and a run compares
its own with the median of up to KEEP earlier runs that share its key (suite, baseline and its chain,
CPU or GPU, threads, device); with one earlier run, with that one. A baseline cell off by more than
SPELL, or a speedup off by more than AGREE (the variant built the same way), marks the run:
results.json, report.md and the CLI say so. So a user learns from the harness itself whether its
speedups hold from run to run on this machine. A reader of runs. Tests: tests/test_bench_history.py.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from lean.bench.compare import speed_ratios

HISTORY = "history.jsonl"
KEEP = 20  # earlier runs to compare with (the latest ones)
MIN_EARLIER = 1  # fewer earlier runs than this: nothing to tell
# On that VM the baseline's cell medians of ordinary runs stayed within about 10% of their median
# (batch 32 x 128 once 13% above it); the whole-run slow state put batch 1 x 128 22% above.
SPELL = 0.15
AGREE = 0.10  # a speedup further than this from its earlier runs' median is named (lean.bench.compare's tolerance)


def _read_back(value: Any) -> Any:
    """`value` as it reads back from the history file (tuples as lists, paths and other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


def _built(row: dict[str, Any]) -> Any:
    """How a row's model was made: its steps' config hashes, else its directory."""
    return [step.get("config_hash") for step in row.get("chain") or []] or row.get("model_dir")


def history_key(results: dict[str, Any]) -> dict[str, Any] | None:
    """What makes two runs' baselines comparable; None without a measured baseline."""
    base = next((r for r in results.get("variants", []) if r.get("name") == results.get("baseline")), None)
    if not base or base.get("status") != "ok" or not base.get("latency"):
        return None
    env, run = results.get("environment", {}), results.get("run", {})
    return _read_back({"suite": results.get("suite", {}).get("name"), "baseline": base["name"], "chain": _built(base),
                       "config": base.get("config"), "machine": env.get("gpu") or env.get("cpu"),
                       "threads": run.get("threads"), "device": run.get("device")})


def baseline_cells(results: dict[str, Any]) -> dict[str, float]:
    """{"b1x128": median ms, ...} of the baseline's measured cells (an unreliable one is no figure to keep)."""
    base = next(r for r in results["variants"] if r.get("name") == results.get("baseline"))
    return {f"b{c['batch_size']}x{c['seq_length']}": c["median_ms"] for c in base.get("latency") or []
            if c.get("median_ms") and not c.get("unreliable")}


def variant_speedups(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{variant: {"id": how it was built, "cells": {"b1x128": speedup, ...}}} of every measured variant
    but the baseline, its unreliable speedups left out (lean.bench.reliability); the id (its steps' config hashes, else its directory, and its config) tells
    whether an earlier run's row of that name is the same variant."""
    out = {}
    for row in results.get("variants", []):
        if row.get("name") == results.get("baseline") or row.get("status") != "ok":
            continue
        doubtful = {f"b{c['batch_size']}x{c['seq_length']}" for c in row.get("latency") or [] if c.get("unreliable")}
        cells = {cell: value for cell, (value, _) in speed_ratios(row).items() if cell not in doubtful}
        if cells:
            out[row["name"]] = {"id": _read_back({"built": _built(row), "config": row.get("config")}), "cells": cells}
    return out


def history_entry(results: dict[str, Any]) -> dict[str, Any] | None:
    """This run's line of the history file; None without a measured baseline."""
    key = history_key(results)
    if key is None:
        return None
    return {"key": key, "started": (results.get("run") or {}).get("started"), "cells": baseline_cells(results),
            "speedups": variant_speedups(results)}


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every entry of a history file; a line that does not parse (a run killed mid-write) is skipped."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def _against(mine: dict[str, float], earlier: list[dict[str, float]], limit: float,
             ratios: dict[str, float], off: list[str], label: str = "") -> None:
    """For each cell of `mine` that MIN_EARLIER of `earlier` have: its ratio to their median into `ratios`,
    and `label + cell` into `off` when the ratio is more than `limit` from 1."""
    for cell, value in mine.items():
        before = [e[cell] for e in earlier if e.get(cell)]
        if len(before) < MIN_EARLIER:
            continue
        ratios[cell] = round(value / statistics.median(before), 3)
        if abs(ratios[cell] - 1) > limit:
            off.append(label + cell)


def _state(entry: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    earlier = [e for e in entries if e.get("key") == entry["key"]][-KEEP:]
    state: dict[str, Any] = {"earlier_runs": len(earlier), "baseline_vs_earlier": {}, "spell": [],
                             "speedups_vs_earlier": {}, "speedups_off": []}
    if len(earlier) < MIN_EARLIER:
        return state
    _against(entry["cells"], [e.get("cells", {}) for e in earlier], SPELL, state["baseline_vs_earlier"], state["spell"])
    for name, mine in entry["speedups"].items():
        same = [e["speedups"][name]["cells"] for e in earlier
                if (e.get("speedups") or {}).get(name, {}).get("id") == mine["id"]]
        ratios: dict[str, float] = {}
        _against(mine["cells"], same, AGREE, ratios, state["speedups_off"], f"{name} ")
        if ratios:
            state["speedups_vs_earlier"][name] = ratios
    return state


def machine_state(results: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """{earlier_runs, baseline_vs_earlier {cell: this run's median / earlier runs' median}, spell [cells
    off by more than SPELL], speedups_vs_earlier {variant: {cell: this run's speedup / earlier runs'
    median}}, speedups_off ["variant cell" off by more than AGREE]}; None without a measured baseline."""
    entry = history_entry(results)
    return None if entry is None else _state(entry, entries)


def spell_text(results: dict[str, Any]) -> str | None:
    """One line for the report and the CLI when the run's baseline or any of its speedups ran off its
    earlier runs on the machine, else None."""
    state = (results.get("run") or {}).get("machine_state") or {}
    off = state.get("speedups_off") or []
    if not state.get("spell") and not off:
        return None
    n = state["earlier_runs"]
    against = "its one earlier run" if n == 1 else f"the median of its {n} earlier runs"
    parts = []
    if state.get("spell"):
        ratios = state["baseline_vs_earlier"]
        cells = ", ".join(f"{(ratios[c] - 1):+.0%} at {c}" for c in state["spell"])
        parts.append(f"this run's baseline ran {cells} against {against} on this machine")
    if off:
        moved = state["speedups_vs_earlier"]
        named = ", ".join(f"{v} {c} {moved[v][c] - 1:+.0%}" for v, c in (o.rsplit(" ", 1) for o in off[:4]))
        total = sum(len(cells) for cells in moved.values())
        source = against if not state.get("spell") else "that run" if n == 1 else "those runs' median"
        parts.append(f"{len(off)} of {total} speedups differ by more than {AGREE:.0%} from {source} "
                     f"({named}{', ...' if len(off) > 4 else ''})")
    who = "this run or that one" if n == 1 else "this run or those"
    return ("; ".join(parts) + f": {who} caught the machine in a slow spell or a different state, so trust only "
            "the speedups that agree; run it again when the machine is quiet")


def note_machine_state(results: dict[str, Any], runs_dir: Path) -> None:
    """Set results["run"]["machine_state"] from RUNS_DIR/history.jsonl, then append this run to it."""
    path = Path(runs_dir) / HISTORY
    entry = history_entry(results)
    if entry is None:
        return
    results["run"]["machine_state"] = _state(entry, read_history(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:  # one line per run, appended whole
        f.write(json.dumps(entry, default=str) + "\n")
