"""Which figures of a run its rounds support: unreliable cells, impossible orderings, a busy machine.

    reasons = cell_reasons(cell, min_quiet_rounds=5)                  # [] for a cell its rounds support
    speedup_reasons(cell, base_cell, 5, 0.30)                         # the cell's and the baseline's
    order_notes(row["latency"])                                       # {(batch, length): note}
    busy_reasons(results)                                             # why the machine was busy, or []

A shared machine (a cloud VM, a laptop running something else) slows some rounds of the interleaved
latency; lean.bench.stats sets those rounds aside and takes the medians from the rest. When nearly
every round is set aside, the few left are no measurement: one or two rounds give a median that is
whatever the machine did then, and an interval that reads ±0%. So a cell that kept fewer than
`min_quiet_rounds` of its rounds (after some were set aside), or whose baseline's median over its kept
rounds disagrees with its median over every round by more than `max_drift`, is unreliable: the readers
show it as such and leave it out of headlines, Pareto plots and `lean optimize`'s choice. Within one
variant, a longer sequence or a larger batch measured much faster than a shorter or smaller one is
impossible on a steady machine and is noted beside both cells. The bottom of lean.bench: imports
nothing else of the package.
"""

from __future__ import annotations

from typing import Any

# A cell left with fewer quiet rounds than this (some having been set aside) is unreliable. The default
# suite plans 13 rounds a cell; quiet runs of it on a 2-vCPU VM kept 6 to 13 (docs/bench.md).
MIN_QUIET_ROUNDS = 5
# The baseline's median over its kept rounds more than this far from its median over every round: the
# slow spells were most of the run, and which rounds were "quiet" is a guess. Quiet runs stayed within 7%.
MAX_DRIFT = 0.30
# A longer sequence or larger batch measured more than this many times faster than a shorter or smaller
# one of the same variant: the machine changed speed between the two cells (more work never runs faster).
ORDER_FACTOR = 1.5
# Busy: more than this share of the baseline's cell rounds set aside...
BUSY_SET_ASIDE = 0.5
# ...or a load average during the timing above the logical CPUs plus this (the harness itself runs at
# most one variant's threads, one per physical core, at a time).
BUSY_LOAD_MARGIN = 1.0


def cell_reasons(cell: dict[str, Any] | None, min_quiet_rounds: int = MIN_QUIET_ROUNDS,
                 max_drift: float | None = None) -> list[str]:
    """Why a cell's own figures are not supported by its rounds ([] when they are): too few quiet rounds
    left after some were set aside, and (with `max_drift`) kept rounds off the all-rounds median."""
    rounds = (cell or {}).get("rounds")
    reasons = []
    if rounds and rounds["quiet"] < rounds["of"] and rounds["quiet"] < min_quiet_rounds:
        reasons.append(f"{rounds['quiet']} of {rounds['of']} rounds quiet (fewer than {min_quiet_rounds})")
    every = (cell or {}).get("all_rounds") or {}
    if max_drift is not None and every.get("median_ms") and cell.get("median_ms"):
        drift = every["median_ms"] / cell["median_ms"] - 1
        if abs(drift) > max_drift:
            reasons.append(f"median over all rounds {drift:+.0%} off the quiet rounds' (more than {max_drift:.0%})")
    return reasons


def speedup_reasons(cell: dict[str, Any], base_cell: dict[str, Any] | None,
                    min_quiet_rounds: int = MIN_QUIET_ROUNDS, max_drift: float = MAX_DRIFT) -> list[str]:
    """Why a cell's speedup over the baseline is unreliable: its own rounds, then the baseline's (its
    rounds and its kept-against-all-rounds drift). A reason both share is given once."""
    mine = cell_reasons(cell, min_quiet_rounds)
    theirs = cell_reasons(base_cell, min_quiet_rounds, max_drift) if base_cell is not cell else []
    return mine + [f"baseline {r}" for r in theirs if r not in mine]


def order_notes(cells: list[dict[str, Any]], factor: float = ORDER_FACTOR) -> dict[tuple[int, int], str]:
    """{(batch, length): note} for the cells of one variant that ran more than `factor` times faster than a
    cell with less work (same batch and a shorter length, or same length and a smaller batch), and for
    that cell; no note when the orderings hold."""
    measured = {(c["batch_size"], c["seq_length"]): c["median_ms"] for c in cells if c.get("median_ms")}
    notes: dict[tuple[int, int], list[str]] = {}
    for (b, s), ms in measured.items():
        for (b2, s2), ms2 in measured.items():
            more_work = (b2 == b and s2 > s) or (s2 == s and b2 > b)
            if more_work and ms2 * factor < ms:
                notes.setdefault((b2, s2), []).append(f"faster than b{b}×{s} ({ms:.2f} ms)")
                notes.setdefault((b, s), []).append(f"slower than b{b2}×{s2} ({ms2:.2f} ms)")
    return {key: "; ".join(texts) + ": the machine changed speed between them" for key, texts in notes.items()}


def set_aside(results: dict[str, Any]) -> dict[str, int] | None:
    """{"rounds": set aside, "of": all} over the baseline's cells (every row shares its rounds); None
    when the run has no rounds (its latency was not interleaved)."""
    base = next((r for r in results.get("variants", []) if r.get("name") == results.get("baseline")), None)
    rounds = [c["rounds"] for c in (base or {}).get("latency") or [] if c.get("rounds")]
    if not rounds:
        return None
    return {"rounds": sum(r["of"] - r["quiet"] for r in rounds), "of": sum(r["of"] for r in rounds)}


def busy_reasons(results: dict[str, Any]) -> list[str]:
    """Why the machine was busy during the run ([] when nothing says so): most of the baseline's rounds
    set aside, a load average past the CPUs, more tasks running than CPUs, unreliable cells (the
    baseline's own included)."""
    reasons = []
    aside = set_aside(results)
    if aside and aside["rounds"] > BUSY_SET_ASIDE * aside["of"]:
        reasons.append(f"{aside['rounds']} of the baseline's {aside['of']} cell rounds were set aside as slow")
    machine = (results.get("run") or {}).get("machine") or {}
    during, cpus = machine.get("during") or {}, machine.get("cpus")
    # the median over the timing's rounds: the load before the run (an install just finished) or at its
    # first rounds (this run's own builds, decaying) says little about the rounds themselves
    load = during.get("load1_median")
    if cpus and load is not None and load > cpus + BUSY_LOAD_MARGIN:
        reasons.append(f"load average {load:.1f} on {cpus} CPUs (median over the timing)")
    # sampled between visits, when the harness's own processes are idle: the rest is other work
    if cpus and during.get("running_median") is not None and during["running_median"] - 1 > cpus:
        reasons.append(f"{during['running_median'] - 1:g} other tasks running at once on {cpus} CPUs (median)")
    unreliable = sum(1 for r in results.get("variants", []) for c in r.get("latency") or [] if c.get("unreliable"))
    if unreliable:
        reasons.append(f"{unreliable} latency cell{'s' if unreliable > 1 else ''} unreliable")
    return reasons


def busy_line(results: dict[str, Any]) -> str | None:
    """One line for the report's top and the terminal when the machine was busy, saying what to do."""
    reasons = busy_reasons(results)
    if not reasons:
        return None
    return ("The machine was busy during this run (" + "; ".join(reasons) + "): the figures marked unreliable "
            "are not measurements. Stop what else runs and rerun, or rerun with `--rigorous` (every cell timed "
            "three times as long, so more quiet rounds remain).")
