"""Tests for lean.bench.scheduler: the interleaved latency, against fake measuring processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


class _FakeProcess:
    """Stands in for a loaded measuring subprocess: answers timing requests, records who was asked when."""

    def __init__(self, name, asked, seconds, log, dies_after=None, skips=()):
        self.name, self.asked, self.seconds, self.log = name, asked, seconds, log
        self.dies_after, self.skips, self.finished = dies_after, skips, False
        # SIGSEGV, if it dies; pid 0 has no /proc entry, so the idle wait is one short window
        self.proc = type("P", (), {"wait": lambda self: -11, "returncode": -11, "pid": 0})()

    def ask(self, line, timeout_s):
        _, b, s, k, untimed = line.split()
        if self.dies_after is not None and len([a for a in self.asked if a[0] == self.name]) >= self.dies_after:
            return None
        self.asked.append((self.name, int(b), int(s), int(k), int(untimed)))
        if (int(b), int(s)) in self.skips:
            return f"@times {b} {s} -"
        # seconds: a number, or a function of how many visits every process has had (the machine's state)
        seconds = self.seconds(len(self.asked)) if callable(self.seconds) else self.seconds
        return f"@times {b} {s} " + ",".join([str(seconds)] * int(k))

    def end(self):
        self.asked.append(("end", self.name))

    def finish(self, timeout_s):
        self.asked.append(("finish", self.name))
        self.finished = True
        return 0, False

    def close(self):
        pass


def test_interleaved_latency_spreads_each_cells_calls_over_rounds_within_its_budget(tmp_path):
    from lean.bench.scheduler import Pending, interleaved_latency
    from lean.bench.suite import MeasureConfig

    class Quiet:
        def phase(self, text):
            pass

    asked: list = []
    measure = MeasureConfig(batch_sizes=[1, 8], seq_lengths=[16], repeats=6, min_repeats=2, max_cell_s=1.0)
    pending = []
    for name, seconds, extra in (("slow", 0.4, {}), ("fast", 0.01, {"skips": {(8, 16)}}),
                                 ("crashes", 0.01, {"dies_after": 2})):
        result = tmp_path / f"{name}.json"
        # what the subprocess saved last: "running" until it finishes
        status = "running" if name == "crashes" else "ok"
        result.write_text(json.dumps({"status": status, "latency": [{"batch_size": 1, "seq_length": 16}]}))
        row = {"name": name, "status": "ok", "timing": {}, "pending": "latency"}
        process = _FakeProcess(name, asked, seconds, tmp_path / f"{name}.log", **extra)
        pending.append(Pending(row, process, measure, result, 60.0, 1.0))
    interleaved_latency(pending, Quiet())

    first_cell = [a for a in asked if a[1] == 1]
    # round 1: every cell in suite order, every variant in suite order; then the order rotates.
    # 'crashes' answered its 2 calls (one per cell) and then stopped answering.
    assert [a[0] for a in first_cell[:5]] == ["slow", "fast", "crashes", "fast", "slow"]
    assert [a[0] for a in asked[:6]] == ["slow", "fast", "crashes", "slow", "fast", "crashes"]
    timed = {name: sum(a[3] for a in first_cell if a[0] == name) for name in ("slow", "fast", "crashes")}
    # slow: 0.4 s a call, so 3 calls fill max_cell_s (1 s); fast: repeats (6) at 0.01 s a call
    assert timed == {"slow": 3, "fast": 6, "crashes": 1}
    # one call per visit here, so the two keep alternating while both still want calls
    assert [a[0] for a in first_cell[3:7]] == ["fast", "slow", "slow", "fast"]
    # a visit to a cell faster than 0.1 s a call starts with 30 ms of untimed calls (not the first visit)
    assert [a[4] for a in first_cell if a[0] == "fast"] == [0, 3, 3, 3, 3, 3]
    assert all(a[4] == 0 for a in first_cell if a[0] == "slow")
    second_cell = [a[0] for a in asked if a[1] == 8]
    assert second_cell.count("fast") == 1  # answered '-': a cell it skips, asked once
    slow, fast, crashes = pending
    assert slow.process.finished and fast.process.finished and not crashes.process.finished
    # every process still answering is told to end before the harness waits for any (they exit together)
    assert [a for a in asked if a[0] in ("end", "finish")] == [("end", "slow"), ("end", "fast"),
                                                                ("finish", "slow"), ("finish", "fast")]
    assert slow.row["status"] == "ok" and "pending" not in slow.row and slow.row["latency"]
    assert crashes.row["status"] == "failed" and "killed by SIGSEGV" in crashes.row["error"]


def test_a_cells_calls_are_spread_over_rounds_in_shares_of_its_target():
    from lean.bench.scheduler import ROUNDS, Pending
    from lean.bench.suite import MeasureConfig

    def pending(**measure):
        return Pending({}, None, MeasureConfig(**measure), Path("r.json"), 60.0, 1.0)

    p = pending(repeats=100, min_repeats=8, max_cell_s=3.0)
    assert p.calls_now([]) == 1  # the first visit: one call after the warm-up
    assert p.target([0.02]) == 100 and p.calls_now([0.02]) == -(-99 // ROUNDS)  # 20 ms: all 100, in 8 shares
    assert p.target([0.1] * 5) == 30  # 3 s at 0.1 s a call
    assert p.target([1.5, 1.6]) == 8 and p.calls_now([1.5, 1.6]) == 1  # min_repeats past max_cell_s
    assert p.calls_now([0.02] * 99) == 1 and p.calls_now([0.02] * 100) == 0
    assert pending(repeats=20, min_repeats=5).target([5.0]) == 20  # no max_cell_s: every repeat


def test_rewarm_calls_fill_a_short_time_before_a_fast_cells_timed_calls():
    from lean.bench.scheduler import REWARM_S, rewarm_calls

    assert rewarm_calls([]) == 0  # the first visit is the warm-up itself
    assert rewarm_calls([0.5, 0.4]) == 0  # a call of 0.1 s or more is warm after the previous one
    assert rewarm_calls([0.05]) == 1 and rewarm_calls([0.004]) == -(-REWARM_S // 0.004)
    assert rewarm_calls([1e-5]) == 100  # at most 100


def test_interleaved_latency_sets_aside_a_slow_spell_and_makes_up_its_calls(tmp_path, monkeypatch):
    # a slow spell over most rounds slows 'base' by 20% and 'onnx' by 60%: the figures and the speedup
    # are those of the quiet rounds, and more rounds make up the calls set aside (to half the target)
    from lean.bench import scheduler
    from lean.bench.report import finalize
    from lean.bench.scheduler import Pending, interleaved_latency
    from lean.bench.suite import MeasureConfig

    monkeypatch.setattr(scheduler, "EXTRA_SHARE", 100.0)  # the fake calls take no time: no time limit here

    class Quiet:
        def phase(self, text):
            pass

    asked: list = []
    measure = MeasureConfig(batch_sizes=[1], seq_lengths=[16], repeats=9, min_repeats=9, max_cell_s=None)
    # each round is two visits, one per variant: the spell covers rounds 2 to ROUNDS - 2 (0-based)
    spell = range(5, 2 * (scheduler.ROUNDS - 2) + 3)
    pending = []
    for name, fast, slow in (("base", 0.2, 0.24), ("onnx", 0.1, 0.16)):
        result = tmp_path / f"{name}.json"
        # what the subprocess writes at the end: figures over every call (the harness replaces them)
        every_call = {"batch_size": 1, "seq_length": 16, "median_ms": 1000 * slow, "count": scheduler.ROUNDS + 2}
        result.write_text(json.dumps({"status": "ok", "latency": [every_call]}))
        row = {"name": name, "status": "ok", "timing": {}, "pending": "latency", "config": {}}
        seconds = (lambda fast, slow: lambda n: slow if n in spell else fast)(fast, slow)
        process = _FakeProcess(name, asked, seconds, tmp_path / f"{name}.log")
        pending.append(Pending(row, process, measure, result, 60.0, 1.0))
    interleaved_latency(pending, Quiet())
    for p in pending:
        cell, = p.row["latency"]
        fast_ms = 200.0 if p.row["name"] == "base" else 100.0
        # the planned rounds (one call each) leave four quiet calls: one more round makes five, half of nine
        planned = scheduler.ROUNDS + 1
        assert cell["median_ms"] == pytest.approx(fast_ms) and cell["count"] == 5
        assert cell["rounds"] == {"quiet": 5, "of": planned + 1} and cell["all_rounds"]["count"] == planned + 1
        assert all(v["quiet"] == (max(v["ms"]) <= fast_ms) for v in cell["visits"])
    results = {"baseline": "base", "variants": [p.row for p in pending]}
    finalize(results)
    onnx_cell, = results["variants"][1]["latency"]
    assert onnx_cell["speedup"] == pytest.approx(2.0) and onnx_cell["speedup_interval"] == [2.0, 2.0]
