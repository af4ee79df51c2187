"""Statistics of timed calls: quantiles, a cell's figures, the speedup's interval, quiet rounds, Pareto fronts.

    from lean.bench.stats import quantile, percentiles, quiet_rounds, pareto_front
    quantile([3.1, 2.9, 3.0], 0.5)                       # Harrell-Davis median
    quiet = quiet_rounds({"sdpa": visits_a, "int8": visits_b})
    pareto_front(points, x="lower", y="higher")

The bottom of lean.bench: imports nothing else of the package (numpy and scipy inside functions), so
the measuring subprocess, the harness and the readers of finished runs share one implementation.

Quiet rounds: a shared machine (a cloud VM) slows down for seconds to minutes at a time, and unequally
for different variants, so a ratio taken during such a stretch belongs to another machine. The harness
visits every variant of a cell within a few seconds in each round, so a slow spell shows as a round in
which the variants of a cell are slower together than in the cell's fastest rounds. `quiet_rounds`
finds the rounds that are not; a round is kept or set aside for every variant of the cell at once, so
no variant is favoured. Measured effects are in docs/bench.md.
"""

from __future__ import annotations

import random
import statistics
from typing import Any, Iterable

# A round counts as quiet when its variants are at most this much slower (their median) than in the
# cell's quietest round: quiet rounds of a 2-vCPU VM spread by a few percent, slow spells by far more.
# The choice, recomputed with benchmarks/estimators.py --quiet-tolerance, is documented in docs/bench.md.
QUIET_TOLERANCE = 0.15


def quantile(values, q: float) -> float:
    """The Harrell-Davis estimate of the q-quantile: a weighted mean of every sorted value, the weights
    from the Beta((n+1)q, (n+1)(1-q)) distribution. With a few dozen timed calls the middle sample jumps
    when a call moves from one side to the other; Harrell-Davis weighs every call and moves far less
    (docs/bench.md). One value: that value."""
    import numpy as np
    from scipy.special import betainc

    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 1:
        return float(x[0])
    a, b = (n + 1) * q, (n + 1) * (1 - q)
    weights = np.diff(betainc(a, b, np.arange(n + 1) / n))
    return float(weights @ x)


def percentiles(times_s: list[float]) -> dict[str, Any]:
    """A cell's figures from its timed calls (seconds): median, p90 and p99 (Harrell-Davis, see
    `quantile`), mean, min, max (ms) and count."""
    import numpy as np

    ms = np.asarray(times_s) * 1000.0
    return {"median_ms": round(quantile(ms, 0.5), 4), "p90_ms": round(quantile(ms, 0.9), 4),
            "p99_ms": round(quantile(ms, 0.99), 4), "mean_ms": round(float(ms.mean()), 4),
            "min_ms": round(float(ms.min()), 4), "max_ms": round(float(ms.max()), 4), "count": int(ms.size)}


def throughput(batch_size: int, median_ms: float) -> float:
    """Samples per second at a cell's median."""
    return round(batch_size / (median_ms / 1000.0), 3)


# ---- intervals -----------------------------------------------------------------------------------------

MIN_INTERVAL_ROUNDS = 4  # fewer quiet rounds shared by both variants than this: no interval, "too few rounds"


def _round_calls(base: list[dict] | None, mine: list[dict] | None) -> list[tuple[list[float], list[float]]]:
    """Per quiet round that both variants visited: (the baseline's calls, the variant's calls), in ms."""
    by_round: dict[int, tuple[list[float], list[float]]] = {}
    for side, visits in ((0, base), (1, mine)):
        for visit in visits or []:
            if visit.get("quiet", True):
                by_round.setdefault(visit["round"], ([], []))[side].extend(visit["ms"])
    return [calls for calls in by_round.values() if calls[0] and calls[1]]


def interval_rounds(base: list[dict] | None, mine: list[dict] | None) -> int:
    """How many quiet rounds the speedup's interval can draw on (rounds both variants were timed in)."""
    return len(_round_calls(base, mine))


def _student_t_spread(rounds: list[tuple[list[float], list[float]]], level: float) -> float:
    """The half-width (as a factor, 1.0 = none) of a Student-t interval of the per-round speedups (their
    logarithms, their spread taken robustly): with few rounds the t quantile grows, so the interval
    carries the uncertainty that a handful of rounds has."""
    import math

    from scipy.stats import t

    logs = [math.log(statistics.median(b) / statistics.median(m)) for b, m in rounds]
    centre = statistics.median(logs)
    # the median absolute deviation, scaled to a normal's standard deviation: one odd round (a first call
    # that still found cold caches) must not stand for the spread of all of them
    scale = 1.4826 * statistics.median(abs(x - centre) for x in logs)
    return math.exp(t.ppf((1 + level) / 2, len(logs) - 1) * scale / math.sqrt(len(logs)))


def speedup_interval(base: list[dict] | None, mine: list[dict] | None, resamples: int = 400,
                     level: float = 0.90) -> list[float] | None:
    """An interval of the speedup (ratio of medians) over the interleaved rounds: the bootstrap (resample
    the rounds with replacement, keep both variants' calls from the rounds drawn, take the ratio of their
    Harrell-Davis medians, keep the middle `level` of the ratios), widened to the Student-t interval of
    the per-round speedups (around the ratio over every quiet call). Its width is how far the ratio moved with the machine's speed during the run;
    the t part keeps a handful of rounds from reading as certainty (a bootstrap of a few rounds is too
    narrow). Only quiet rounds count (visits marked `quiet: false` are set aside). Deterministic (fixed
    seed). None with fewer than MIN_INTERVAL_ROUNDS rounds shared by both (`interval_rounds` says how many)."""
    rounds = _round_calls(base, mine)
    if len(rounds) < MIN_INTERVAL_ROUNDS:
        return None
    rng = random.Random(0)
    ratios = []
    for _ in range(resamples):
        drawn = [rounds[rng.randrange(len(rounds))] for _ in rounds]
        b = [t for r in drawn for t in r[0]]
        m = [t for r in drawn for t in r[1]]
        ratios.append(quantile(b, 0.5) / quantile(m, 0.5))
    ratios.sort()
    tail = (1 - level) / 2
    speedup = quantile([t for r in rounds for t in r[0]], 0.5) / quantile([t for r in rounds for t in r[1]], 0.5)
    spread = _student_t_spread(rounds, level)
    low, high = speedup / spread, speedup * spread
    return [round(min(low, ratios[int(tail * (len(ratios) - 1))]), 4),
            round(max(high, ratios[int((1 - tail) * (len(ratios) - 1))]), 4)]


def interval_spread(cell: dict[str, Any]) -> float | None:
    """How far the speedup's interval reaches from the speedup, relative (0.08 = ±8%); None without one."""
    interval, speedup = cell.get("speedup_interval"), cell.get("speedup")
    if not interval or not speedup:
        return None
    return max(abs(interval[0] / speedup - 1), abs(interval[1] / speedup - 1))


# ---- quiet rounds --------------------------------------------------------------------------------------

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
    cell["throughput_sps"] = throughput(cell["batch_size"], cell["median_ms"])


# ---- Pareto fronts -------------------------------------------------------------------------------------

def pareto_front(points: list[tuple[str, float, float]], x: str = "lower", y: str = "higher"
                 ) -> list[tuple[str, float, float]]:
    """(name, x, y) points that no other point beats on both axes; `x` and `y` say which way is better
    ("lower" or "higher"). Ordered from the best x on. Latency/accuracy: the defaults; decode tokens/s
    against perplexity: x="higher", y="lower"."""
    sx, sy = (1 if x == "lower" else -1), (1 if y == "higher" else -1)
    front, best = [], float("-inf")
    for point in sorted(points, key=lambda p: (sx * p[1], -sy * p[2])):
        if sy * point[2] > best:
            front.append(point)
            best = sy * point[2]
    return front
