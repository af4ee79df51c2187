"""How far runs of one suite agree on their speedups under two median estimates, recomputed from the
timed calls each run recorded (results.json: every latency cell's `visits`).

    python benchmarks/estimators.py RUN_DIR RUN_DIR [RUN_DIR ...] [--tolerance 0.10] [--quiet-tolerance T]

For every pair of runs and every speedup over the baseline (each variant's latency cells), it counts
the pairs within the tolerance, once with the middle call (the sample median) of each cell's calls
in quiet rounds and once with the Harrell-Davis median (lean.bench.stats.quantile, what the
harness reports). With --quiet-tolerance, each cell's quiet rounds are chosen again from its recorded
visits with that tolerance (lean.bench.stats.quiet_rounds) instead of as the run marked them; the
rounds a harness with that tolerance would have added are not there. Only interleaved runs record
their calls.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

from lean.bench.stats import quantile, quiet_calls, quiet_rounds


def cell_calls(cell: dict, quiet: set[int] | None) -> list[float]:
    """The calls of the rounds in `quiet`, or of the rounds the run marked quiet when None."""
    visits = cell.get("visits", [])
    if quiet is None:
        quiet = {visit["round"] for visit in visits if visit.get("quiet", True)}
    return quiet_calls(visits, quiet)


def speedups(run: dict, median, quiet_tolerance: float | None = None) -> dict[tuple[str, int, int], float]:
    rows = [row for row in run["variants"] if row.get("status") == "ok"]
    quiet: dict[tuple[int, int], set[int] | None] = {}
    for key in {(c["batch_size"], c["seq_length"]) for row in rows for c in row.get("latency") or []}:
        visits = {row["name"]: c["visits"] for row in rows for c in row.get("latency") or []
                  if (c["batch_size"], c["seq_length"]) == key and c.get("visits")}
        quiet[key] = None if quiet_tolerance is None else quiet_rounds(visits, quiet_tolerance)
    cells = {(row["name"], c["batch_size"], c["seq_length"]): cell_calls(c, quiet[c["batch_size"], c["seq_length"]])
             for row in rows for c in row.get("latency") or []}
    base = run["baseline"]
    return {key: median(cells[(base, *key[1:])]) / median(calls) for key, calls in cells.items()
            if key[0] != base and calls and cells.get((base, *key[1:]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--quiet-tolerance", type=float, default=None)
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give two runs or more")
    runs = {}
    for path in args.runs:
        file = path / "results.json"
        if not file.is_file():
            parser.error(f"{file} does not exist")
        runs[path.name] = json.loads(file.read_text())
    for label, median in (("middle call", statistics.median), ("Harrell-Davis", lambda x: quantile(x, 0.5))):
        ratios = {name: speedups(run, median, args.quiet_tolerance) for name, run in runs.items()}
        within = total = full = 0
        outside: dict[str, int] = {}
        for a, b in itertools.combinations(ratios, 2):
            shared = ratios[a].keys() & ratios[b].keys()
            bad = [k for k in shared if abs(ratios[b][k] / ratios[a][k] - 1) > args.tolerance]
            within, total, full = within + len(shared) - len(bad), total + len(shared), full + (not bad)
            for k in bad:
                outside[f"{k[0]} b{k[1]}x{k[2]}"] = outside.get(f"{k[0]} b{k[1]}x{k[2]}", 0) + 1
        pairs = len(ratios) * (len(ratios) - 1) // 2
        print(f"{label}: {within} of {total} speedups within {args.tolerance:.0%}, {full} of {pairs} run pairs "
              f"agree on all" + (": outside, in how many pairs: " + ", ".join(
                  f"{k} {n}" for k, n in sorted(outside.items(), key=lambda t: -t[1])) if outside else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
