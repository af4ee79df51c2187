"""Do two runs of one suite agree? Quality exactly, and each variant's speed relative to its run's
baseline within a tolerance (absolute times differ between machines and days; ratios should not).

    python -m lean.bench.compare RUN_A RUN_B [--tolerance 0.10]
    python -m lean.bench.compare --rounds RUN

RUN_A and RUN_B are run directories (or their results.json). Prints one line per variant and a
verdict; exits 1 when they disagree, 2 on bad input. `--rounds` prints one run's latency round by
round (the median of each visit's calls), where a slow spell of the machine shows as a stretch of
slower rounds, the ones set aside in brackets. Any results.json lean bench wrote loads
(lean.bench.results). A reader of runs. Tests: tests/test_bench_compare.py.
"""

from __future__ import annotations

import sys
from typing import Any

from lean.bench.results import load_results
from lean.errors import LeanError

QUALITY_KEYS = ("accuracy", "macro_f1", "perplexity")


def speed_ratios(row: dict[str, Any]) -> dict[str, tuple[float, list[float] | None]]:
    """Every speed figure of a row relative to its run's baseline (higher is faster), with its interval
    when the run measured one (interleaved latency)."""
    out = {f"b{c['batch_size']}x{c['seq_length']}": (c["speedup"], c.get("speedup_interval"))
           for c in row.get("latency") or [] if c.get("speedup")}
    for key, value in (row.get("vs_baseline") or {}).items():
        if key.startswith("decode_speedup_b") and value:
            out[key.replace("decode_speedup_", "decode ")] = (value, None)
    return out


def unreliable_cells(row: dict[str, Any]) -> set[str]:
    """The row's latency cells ("b1x128") whose rounds do not support their speedup (lean.bench.reliability)."""
    return {f"b{c['batch_size']}x{c['seq_length']}" for c in row.get("latency") or [] if c.get("unreliable")}


def _overlap(a: list[float] | None, b: list[float] | None) -> bool:
    return bool(a and b and a[0] <= b[1] and b[0] <= a[1])


def compare_runs(a: dict[str, Any], b: dict[str, Any], tolerance: float = 0.10) -> dict[str, Any]:
    """Per variant measured in both runs: quality figures equal, speed ratios within `tolerance` (relative)."""
    if a.get("baseline") != b.get("baseline"):
        raise LeanError(f"the runs have different baselines ('{a.get('baseline')}' and '{b.get('baseline')}'): "
                        "ratios are comparable only against the same baseline")
    rows_b = {r["name"]: r for r in b.get("variants", [])}
    variants, agree = [], True
    for row in a.get("variants", []):
        other = rows_b.get(row["name"])
        if not other or row.get("status") != "ok" or other.get("status") != "ok":
            continue
        qa, qb = row.get("quality") or {}, other.get("quality") or {}
        quality = {k: (qa[k], qb[k]) for k in QUALITY_KEYS if k in qa and k in qb}
        quality_equal = all(x == y for x, y in quality.values())
        doubtful = unreliable_cells(row) | unreliable_cells(other)  # no figure to agree or disagree with
        ra = {k: v for k, v in speed_ratios(row).items() if k not in doubtful}
        rb = {k: v for k, v in speed_ratios(other).items() if k not in doubtful}
        speeds = {k: (ra[k][0], rb[k][0], round(rb[k][0] / ra[k][0] - 1, 4)) for k in ra if k in rb}
        # a difference past the tolerance that both runs' own intervals cover: the machine's speed moved
        within_intervals = sorted(k for k, (_, _, d) in speeds.items()
                                  if abs(d) > tolerance and _overlap(ra[k][1], rb[k][1]))
        worst = max((abs(d) for _, _, d in speeds.values()), default=0.0)
        unmatched = sorted(set(ra) ^ set(rb))  # a speed figure only one run has: nothing to agree on
        ok = quality_equal and worst <= tolerance and not unmatched
        agree &= ok
        with_intervals = sum(1 for k in speeds if ra[k][1] and rb[k][1])
        variants.append({"name": row["name"], "quality": quality, "quality_equal": quality_equal, "speed": speeds,
                         "with_intervals": with_intervals,
                         "unmatched": unmatched, "worst_speed_difference": worst, "agree": ok,
                         "within_intervals": within_intervals, "unreliable": sorted(doubtful)})
    if not variants:
        raise LeanError("the runs share no variant measured in both: nothing to compare")
    return {"baseline": a.get("baseline"), "tolerance": tolerance, "agree": agree, "variants": variants}


def format_comparison(comparison: dict[str, Any]) -> str:
    lines = [f"baseline {comparison['baseline']}; speed ratios must agree within {comparison['tolerance']:.0%}"]
    for v in comparison["variants"]:
        quality = ", ".join(f"{k} {x:g}" + ("" if x == y else f" vs {y:g}") for k, (x, y) in v["quality"].items())
        speed = ", ".join(f"{k} {x:.2f}x/{y:.2f}x ({d:+.1%}{'*' if k in v['within_intervals'] else ''})"
                          for k, (x, y, d) in v["speed"].items())
        lines.append(f"{'ok  ' if v['agree'] else 'DIFF'} {v['name']}: {quality or 'no quality'}"
                     + (f"; {speed}" if speed else "")
                     + (f"; only one run has {', '.join(v['unmatched'])}" if v["unmatched"] else "")
                     + (f"; left out, unreliable in a run: {', '.join(v['unreliable'])}" if v.get("unreliable")
                        else ""))
    speeds = [d for v in comparison["variants"] if v["name"] != comparison["baseline"]
              for _, _, d in v["speed"].values()]
    outside = [d for d in speeds if abs(d) > comparison["tolerance"]]
    covered = sum(len(v["within_intervals"]) for v in comparison["variants"])
    intervals = any(v["with_intervals"] for v in comparison["variants"])
    if speeds:
        line = f"{len(speeds) - len(outside)} of {len(speeds)} speed ratios within {comparison['tolerance']:.0%}"
        if outside and intervals:
            line += f"; {covered} of the {len(outside)} others (*) have overlapping 90% intervals"
            if covered:
                line += " (the ratio moved that much within a run, as the machine's speed changed)"
            if covered < len(outside):
                line += (f"; {len(outside) - covered} differ beyond both runs' spread: the runs caught the machine "
                         "in different states (a slow spell as long as a run); run both again when it is quiet")
        lines.append(line)
    lines.append("the runs agree" if comparison["agree"] else "the runs disagree")
    return "\n".join(lines)


def format_rounds(results: dict[str, Any]) -> str:
    """Each variant's latency cells round by round: the median ms of the calls of each visit."""
    import statistics

    lines = ["median ms of each round's calls, round 1 first (interleaved latency); [in brackets]: a round set "
             "aside, the cell's variants ran slower together"]
    for row in results.get("variants", []):
        for cell in row.get("latency") or []:
            if cell.get("visits"):
                values = " ".join(f"{statistics.median(v['ms']):.4g}" if v.get("quiet", True)
                                  else f"[{statistics.median(v['ms']):.4g}]" for v in cell["visits"])
                lines.append(f"{row['name']} b{cell['batch_size']}x{cell['seq_length']}: {values}")
    if len(lines) == 1:
        raise LeanError("the run has no per-round timings: its latency was not interleaved (or it is older)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lean.bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b", nargs="?")
    parser.add_argument("--tolerance", type=float, default=0.10, help="relative difference allowed in speed ratios")
    parser.add_argument("--rounds", action="store_true", help="print one run's latency round by round instead")
    args = parser.parse_args(argv)
    try:
        if args.rounds:
            if args.run_b:
                raise LeanError("--rounds takes one run directory")
            print(format_rounds(load_results(args.run_a)))
            return 0
        if not args.run_b:
            raise LeanError("pass two run directories to compare (or --rounds and one run)")
        if not 0 < args.tolerance < 1:
            raise LeanError(f"--tolerance must be between 0 and 1, got {args.tolerance}")
        comparison = compare_runs(load_results(args.run_a), load_results(args.run_b), args.tolerance)
    except LeanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_comparison(comparison))
    return 0 if comparison["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
