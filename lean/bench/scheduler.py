"""The interleaved latency: every loaded variant's cells timed in turn, round after round.

    Interleaved(pending, progress).run()

A round visits every cell and, within a cell, every variant (the order rotating each round); each
visit is a few back-to-back calls (one in the first round, after the warm-up; then a ROUNDS-th of the
cell's calls), so each cell's calls spread over the whole phase. A slow spell of a shared machine
(seconds to minutes) shows as rounds in which a cell's variants are slower together
(lean.bench.stats.quiet_rounds): those rounds are set aside for every variant of the cell, and a cell
short of calls in quiet rounds gets more rounds, for at most EXTRA_SHARE more time than the planned
ones. A visit to a cell whose calls take under REWARM_BELOW_S starts with REWARM_S of untimed calls,
so every timed call is one of a steady stream. After each visit the harness waits until that
variant's process is idle (OpenMP and onnxruntime worker threads spin for a while after a call, and
would otherwise run beside the next variant's timed call). Parent side of lean.bench.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lean.bench import protocol
from lean.bench.launcher import Child, wait_until_idle
from lean.bench.outcome import collect_row
from lean.bench.stats import quiet_calls, quiet_rounds, settle_cell

ROUNDS = 12  # the interleaved latency spreads each cell's timed calls over this many rounds (after the first)
EXTRA_SHARE = 0.1  # rounds past the planned ones (for cells with under half their calls in quiet rounds) may add
                   # at most this share of the planned rounds' time
REWARM_BELOW_S = 0.1  # a visit to a cell faster than this starts with untimed calls...
REWARM_S = 0.03  # ...for about this long (one call at least)

Key = tuple[int, tuple[int, int]]  # (id of a Pending, (batch, length))


@dataclass
class Pending:
    """A variant loaded in its measuring subprocess, waiting for its interleaved latency."""

    row: dict[str, Any]
    process: Child
    measure: Any  # the variant's MeasureConfig
    result_file: Path
    timeout_s: float
    load_wall_s: float  # from the variant's start to READY
    ended: str | None = None  # None while it answers; else why it stopped ("timeout" or "exited")

    def grid(self) -> set[tuple[int, int]]:
        return {(b, s) for b in self.measure.batch_sizes for s in self.measure.seq_lengths}

    def target(self, times: list[float]) -> int:
        """Timed calls this cell gets: `repeats`, fewer when they would take more than `max_cell_s` at
        the median so far, never fewer than `min_repeats`."""
        m = self.measure
        if m.max_cell_s is None or not times:
            return m.repeats
        return min(m.repeats, max(m.min_repeats, math.ceil(m.max_cell_s / statistics.median(times))))

    def wanted(self, times: list[float], counted: int | None = None, extra: bool = False) -> int:
        """Timed calls this cell still wants: its target less `counted` (the calls made in quiet rounds;
        default: all of them); in the `extra` rounds past the planned ones, half its target less them."""
        target = self.target(times)
        counted = len(times) if counted is None else counted
        return max(0, (math.ceil(target / 2) if extra else target) - counted)

    def calls_now(self, times: list[float], counted: int | None = None, extra: bool = False) -> int:
        """Calls to ask for in this round: one in the first (after the warm-up), then a ROUNDS-th share
        of the cell's target while it wants more (see `wanted`), so its calls spread over the whole
        interleaved phase."""
        if not times:
            return 1
        return min(self.wanted(times, counted, extra), math.ceil((self.target(times) - 1) / ROUNDS))


def rewarm_calls(times: list[float]) -> int:
    """Untimed calls to start a visit with: after the other variants ran, the first calls find cold
    caches and sleeping threads, which costs little beside 0.1 s but a lot beside 1 ms; so a fast cell
    gets REWARM_S of untimed calls."""
    if not times:
        return 0
    median = statistics.median(times)
    return 0 if median >= REWARM_BELOW_S else max(1, min(100, math.ceil(REWARM_S / median)))


class Interleaved:
    """The rounds of one interleaved latency phase over `pending`, and the rows they complete."""

    def __init__(self, pending: list[Pending], progress, on_round: Callable[[], None] | None = None):
        self.pending, self.progress = pending, progress
        self.on_round = on_round  # called as each round starts (the runner samples the machine's load)
        self.keys: list[tuple[int, int]] = []  # every variant's cells, in suite order
        for p in pending:
            self.keys += [(b, s) for b in p.measure.batch_sizes for s in p.measure.seq_lengths
                          if (b, s) not in self.keys]
        self.times: dict[Key, list[float]] = {(id(p), k): [] for p in pending for k in p.grid()}
        self.visits: dict[Key, list[dict[str, Any]]] = {key: [] for key in self.times}  # per round
        self.counted: dict[Key, int] = {key: 0 for key in self.times}  # calls in quiet rounds
        self.quiet: dict[tuple[int, int], set[int]] = {}
        self.skipped: set[Key] = set()  # cells a variant answered SKIPPED (longer than it takes)
        self.by_id = {id(p): p for p in pending}

    def settle(self, key: tuple[int, int]) -> None:
        """Which rounds of this cell were quiet, and the calls they hold."""
        cell_visits = {pid: self.visits[pid, key] for pid in self.by_id if self.visits.get((pid, key))}
        self.quiet[key] = quiet_rounds(cell_visits)
        for pid, vs in cell_visits.items():
            self.counted[pid, key] = len(quiet_calls(vs, self.quiet[key]))

    def calls_left(self, extra: bool) -> int:
        return sum(self.by_id[pid].wanted(cell, self.counted[pid, key], extra)
                   for (pid, key), cell in self.times.items()
                   if self.by_id[pid].ended is None and (pid, key) not in self.skipped)

    def run(self) -> None:
        """Rounds until every cell has its calls (or the extra rounds' time is spent); then every row."""
        started, planned_s = time.perf_counter(), None
        try:
            for round_ in range(10**9):
                extra = round_ > ROUNDS  # past the planned rounds: making up the calls of rounds set aside
                if round_ == ROUNDS + 1:
                    planned_s = time.perf_counter() - started
                left = self.calls_left(extra)
                if left <= 0 or (extra and time.perf_counter() - started > planned_s * (1 + EXTRA_SHARE)):
                    break
                if self.on_round is not None:
                    self.on_round()
                self.progress.phase(f"latency round {round_ + 1}: every cell, {len(self.pending)} variants in turn, "
                                    f"about {left} timed calls to go"
                                    + (" (more rounds: the machine ran slower in some)" if extra else ""))
                for cell in self.keys:
                    self.visit_cell(round_, cell, extra)
                    self.settle(cell)
        finally:
            for key in self.keys:  # the last round included (or the one Ctrl-C cut short)
                self.settle(key)
            self.finish()

    def visit_cell(self, round_: int, cell: tuple[int, int], extra: bool) -> None:
        """One round's visits to a cell: every variant that takes it, the order rotating each round."""
        taking = [p for p in self.pending if p.ended is None and cell in p.grid() and (id(p), cell) not in self.skipped]
        if not taking:
            return
        k = round_ % len(taking)
        for p in taking[k:] + taking[:k]:
            times = self.times[id(p), cell]
            calls = p.calls_now(times, self.counted[id(p), cell], extra)
            if not calls:
                continue
            reply = p.process.ask(protocol.time_request(*cell, calls, rewarm_calls(times)), p.timeout_s)
            wait_until_idle(p.process.proc.pid)
            if reply is None or reply == Child.TIMEOUT:
                p.ended = "timeout" if reply == Child.TIMEOUT else "exited"
                continue
            seconds = protocol.parse_times_reply(reply).seconds
            if seconds is None:  # a cell this variant skips (longer than the model takes)
                self.skipped.add((id(p), cell))
                continue
            times += seconds
            self.visits[id(p), cell].append({"round": round_, "ms": [round(t * 1000, 4) for t in seconds]})

    def finish(self) -> None:
        """Every process writes its result and exits (at once: about a second each); complete each row,
        with every timed call by round and its figures from the quiet rounds."""
        for p in self.pending:
            if p.ended is None:
                p.process.end()
        for p in self.pending:
            if p.ended is None:
                code, timed_out = p.process.finish(p.timeout_s)
            else:
                code, timed_out = p.process.proc.wait(), p.ended == "timeout"
                p.process.close()
            p.row.pop("pending", None)
            collect_row(p.row, p.result_file, p.process.log, code, timed_out, "latency (interleaved)", p.timeout_s,
                        p.load_wall_s)
            timing = p.row["timing"]
            # the interleaved phase, whole
            timing["wall_s"] = round(timing["wall_s"] + (timing.get("latency_s") or 0), 2)
            for cell in p.row.get("latency") or []:
                key = (cell["batch_size"], cell["seq_length"])
                mine = self.visits.get((id(p), key))
                if mine and "median_ms" in cell:
                    settle_cell(cell, mine, self.quiet[key])


def interleaved_latency(pending: list[Pending], progress, on_round: Callable[[], None] | None = None) -> None:
    """Time every pending variant's latency cells in rounds, then complete each row (see Interleaved)."""
    Interleaved(pending, progress, on_round).run()
