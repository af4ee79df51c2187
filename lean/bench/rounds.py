"""Which rounds of the interleaved latency ran at the machine's usual speed.

    from lean.bench.rounds import quiet_rounds, settle_cell
    quiet = quiet_rounds({"sdpa": visits_a, "int8": visits_b})   # {0, 1, 3, ...}
    settle_cell(cell, visits_a, quiet)                           # the cell's figures from those rounds

A shared machine (a cloud VM) slows down for seconds to minutes at a time. On a 2-vCPU VM we saw
every variant's batch-1 calls slow down at once, by 20% (PyTorch float32) to 65% (onnxruntime int8),
for stretches of ten seconds to over a minute, while a one-thread run of the same model held its
speed: another tenant had the second vCPU's core, and a two-thread call waits for the slower thread.
Variants slow down unequally, so a ratio taken during such a stretch belongs to another machine,
and two runs that caught the spells in different shares disagreed by up to 65% on one speedup.

The harness visits every variant of a cell within a few seconds in each round, so a slow spell shows
as a round in which the variants of a cell are slower together than in the cell's fastest rounds.
`quiet_rounds` finds the rounds that are not; the cell's median and percentiles come from their calls
(every call stays in results.json, with the all-rounds median beside). No variant is favoured: a
round is kept or set aside for every variant of the cell at once. Tests: tests/test_bench.py.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

# A round counts as quiet when its variants are at most 15% slower (their median) than in the cell's
# quietest round: on that VM quiet rounds spread by about 5%, and slow spells slowed them by 20 to 65%.
# Recomputed with benchmarks/estimators.py --quiet-tolerance from every pair of the 2-thread runs of the
# default suite on it, 44 runs of 2026-11-30 (946 pairs) and 15 of 2026-12-02 (105 pairs), 15% kept
# the most speedups within 10% of each other on both days: 16998 of 18920 and 1802 of 2100, 247 and 23
# pairs agreeing on all 20; 10% (used from 961d848 on, chosen on the first 11 runs) 16740 and 1705, 199
# and 13 pairs; 12% 16885 and 1793; 20% 16880 and 1848; 8% 16700 and 1671.
QUIET_TOLERANCE = 0.15


def round_slowness(visits: dict[Any, list[dict[str, Any]]]) -> dict[int, float]:
    """Per round: how much slower than their own fastest visit the variants ran, their median
    (1.0 = every variant at its best). visits: {variant: [{round, ms: [each timed call]}]}."""
    best = {name: min(statistics.median(v["ms"]) for v in vs) for name, vs in visits.items() if vs}
    per_round: dict[int, list[float]] = {}
    for name, vs in visits.items():
        for v in vs:
            per_round.setdefault(v["round"], []).append(statistics.median(v["ms"]) / best[name])
    return {r: statistics.median(values) for r, values in sorted(per_round.items())}


def quiet_rounds(visits: dict[Any, list[dict[str, Any]]], tolerance: float = QUIET_TOLERANCE) -> set[int]:
    """The rounds of one cell in which its variants ran within `tolerance` of the cell's quietest round."""
    slowness = round_slowness(visits)
    if not slowness:
        return set()
    quietest = min(slowness.values())
    return {r for r, s in slowness.items() if s <= quietest * (1 + tolerance)}


def quiet_calls(visits: Iterable[dict[str, Any]], quiet: set[int]) -> list[float]:
    """The timed calls (ms) of the visits made in quiet rounds."""
    return [t for v in visits if v["round"] in quiet for t in v["ms"]]


def settle_cell(cell: dict[str, Any], visits: list[dict[str, Any]], quiet: set[int]) -> None:
    """Give a measured cell its visits (each marked quiet or not), its figures from the quiet rounds'
    calls, `all_rounds` (median and count over every timed call) and `rounds` {quiet, of}."""
    from lean.bench.measure import percentiles

    mine = {v["round"] for v in visits}
    for v in visits:
        v["quiet"] = v["round"] in quiet
    cell["visits"] = visits
    cell["rounds"] = {"quiet": len(mine & quiet), "of": len(mine)}
    calls = quiet_calls(visits, quiet)
    if not calls or len(calls) == sum(len(v["ms"]) for v in visits):
        return
    cell["all_rounds"] = {"median_ms": cell["median_ms"], "count": cell["count"]}
    cell.update(percentiles([t / 1000 for t in calls]))
    cell["throughput_sps"] = round(cell["batch_size"] / (cell["median_ms"] / 1000.0), 3)
