"""Tests for what a report says when its rounds do not support its figures (lean.bench.reliability, the
interval in lean.bench.stats, the machine's record in lean.bench.machine, and the readers that show them).

Synthetic round timings go through the same quiet-round logic as a real run (lean.bench.stats), so the
flags are checked deterministically; one test runs the harness beside CPU hogs.

    python -m pytest tests/test_bench_reliability.py -q
"""

from __future__ import annotations

import csv
import io
import random

import pytest

from lean.bench.reliability import busy_line, cell_reasons, order_notes
from lean.bench.stats import percentiles, quiet_rounds, settle_cell, speedup_interval


def _cells(per_round: dict[str, list[float]], batch: int, length: int) -> dict[str, dict]:
    """Each variant's cell from one timed call per round (ms), settled as the scheduler settles it."""
    visits = {name: [{"round": r, "ms": [ms]} for r, ms in enumerate(calls)] for name, calls in per_round.items()}
    quiet = quiet_rounds(visits)
    cells = {}
    for name, vs in visits.items():
        cell = {"batch_size": batch, "seq_length": length}
        cell.update(percentiles([t / 1000 for v in vs for t in v["ms"]]))
        settle_cell(cell, vs, quiet)
        cells[name] = cell
    return cells


def _results(grid: dict[tuple[int, int], dict[str, list[float]]], machine: dict | None = None) -> dict:
    from lean.bench.report import finalize

    rows = {name: {"name": name, "status": "ok", "config": {}, "quality": {"accuracy": acc}, "latency": []}
            for name, acc in (("teacher", 0.95), ("student", 0.93))}
    for (batch, length), per_round in grid.items():
        for name, cell in _cells(per_round, batch, length).items():
            rows[name]["latency"].append(cell)
    run = {"device": "cpu", "threads": 2, "machine": machine or {}}
    results = {"baseline": "teacher", "suite": {"name": "s", "measure": {"batch_sizes": [1], "seq_lengths": [128]}},
               "run": run, "environment": {}, "task": {}, "variants": list(rows.values())}
    return finalize(results)


def _quiet_grid(rounds: int = 13) -> dict:
    rng = random.Random(1)

    def jitter(ms):  # a quiet VM: a few percent
        return [ms * (1 + rng.uniform(-0.03, 0.03)) for _ in range(rounds)]

    return {(1, 128): {"teacher": jitter(100.0), "student": jitter(25.0)},
            (1, 256): {"teacher": jitter(200.0), "student": jitter(50.0)}}


def _busy_grid() -> dict:
    """As in the report that prompted this: almost every round slowed, unequally, by other work."""
    rng = random.Random(2)
    slow = [1.0 if r == 3 else rng.uniform(3, 6) for r in range(15)]
    return {(1, 128): {"teacher": [100.0 * s for s in slow], "student": [25.0 * s * rng.uniform(0.5, 2) for s in slow]},
            (1, 256): {"teacher": [200.0 * j for j in (1, 1.02, 0.99, 1.01, 1.0, 0.98, 1.01)],
                       "student": [50.0 * j for j in (1, 1.01, 1.0, 0.99, 1.02, 1.0, 0.99)]}}


def test_a_quiet_run_marks_nothing_and_keeps_its_figures():
    from lean.bench.markdown import to_markdown
    from lean.bench.report import to_csv

    results = _results(_quiet_grid())
    cells = [c for r in results["variants"] for c in r["latency"]]
    assert not any(c.get("unreliable") or c.get("order") for c in cells)
    assert "busy" not in results["run"] and busy_line(results) is None
    student = results["variants"][1]["latency"][0]
    assert student["speedup"] == pytest.approx(4.0, rel=0.01) and student["rounds"]["quiet"] == 13
    low, high = student["speedup_interval"]
    assert low < student["speedup"] < high and high / low < 1.1  # a quiet run's interval stays narrow
    report = to_markdown(results)
    assert "unreliable" not in report.split("## Reading this report")[0] and "busy" not in report
    assert all(not row["unreliable"] for row in csv.DictReader(io.StringIO(to_csv(results))))


def test_a_cell_left_with_too_few_quiet_rounds_is_unreliable_everywhere(monkeypatch):
    from lean.bench import plot
    from lean.bench.markdown import to_markdown
    from lean.bench.report import to_csv
    from lean.bench.terminal import results_table

    results = _results(_busy_grid())
    teacher, student = results["variants"]
    b1x128 = student["latency"][0]
    assert b1x128["rounds"]["quiet"] < 5 and b1x128["speedup"]
    assert "rounds quiet (fewer than 5)" in b1x128["unreliable"]
    assert "rounds quiet" in teacher["latency"][0]["unreliable"]  # the baseline's own figure too
    assert "unreliable" not in student["latency"][1]  # the quiet cell of the same run stays clean
    # an interval from one round would read ±0%: there is none, and the cell says why
    assert "speedup_interval" not in b1x128 and "too few for an interval" in b1x128["interval_note"]
    assert results["run"]["set_aside"]["rounds"] > 0.5 * results["run"]["set_aside"]["of"]
    report = to_markdown(results).splitlines()
    assert report[2].startswith("**The machine was busy during this run (") and "--rigorous" in report[2]
    table_row = next(line for line in report if line.startswith("| `student`"))
    assert f"{b1x128['median_ms']:.2f} ({b1x128['speedup']:.2f}×, unreliable)" in table_row
    assert any(line.startswith("- `student` b1×128: unreliable, ") for line in report)
    rows = list(csv.DictReader(io.StringIO(to_csv(results))))
    assert [bool(r["unreliable"]) for r in rows if r["variant"] == "student"] == [True, False]
    assert "unreliable" in str(results_table(results).caption)
    drawn = []
    monkeypatch.setattr(plot, "draw_points", lambda ax, points, front, where: drawn.extend(points))
    plot.pareto_png(results)
    assert drawn == []  # both rows' primary cell is unreliable: neither is placed on the front


def test_a_baseline_whose_quiet_rounds_are_far_from_all_its_rounds_makes_every_speedup_unreliable():
    cell = {"median_ms": 100.0, "rounds": {"quiet": 6, "of": 13}, "all_rounds": {"median_ms": 150.0, "count": 13}}
    assert cell_reasons(cell, 5) == []  # enough quiet rounds...
    assert "median over all rounds +50% off" in cell_reasons(cell, 5, max_drift=0.30)[0]  # ...but they are a guess
    results = _results(_quiet_grid())
    base = results["variants"][0]["latency"][0]
    base["all_rounds"] = {"median_ms": base["median_ms"] * 1.5, "count": 13}
    from lean.bench.report import finalize

    finalize(results)
    assert results["variants"][1]["latency"][0]["unreliable"].startswith("baseline median over all rounds")
    assert "min_quiet_rounds" not in results["run"]
    results["run"]["min_quiet_rounds"] = 14  # the option: more quiet rounds asked of every cell
    finalize(results)
    assert "unreliable" not in results["variants"][1]["latency"][1]  # no round set aside: nothing to doubt


def test_intervals_carry_the_uncertainty_of_few_rounds():
    def visits(ratios, repeat=1):
        base = [{"round": r, "ms": [100.0]} for r in range(len(ratios) * repeat)]
        return base, [{"round": r, "ms": [100.0 / x]} for r, x in enumerate(ratios * repeat)]

    assert speedup_interval(*visits([2.0])) is None and speedup_interval(*visits([2.0, 2.1, 1.9])) is None
    few_low, few_high = speedup_interval(*visits([2.0, 2.2, 1.8, 2.1]))
    many_low, many_high = speedup_interval(*visits([2.0, 2.2, 1.8, 2.1], repeat=6))
    assert few_low < many_low < 2.05 < many_high < few_high  # the same spread over fewer rounds: wider
    assert few_high / few_low > 1.15


def test_impossible_orderings_are_noted_beside_both_cells():
    def cell(b, s, ms):
        return {"batch_size": b, "seq_length": s, "median_ms": ms}

    notes = order_notes([cell(1, 128, 740.78), cell(1, 256, 127.86), cell(32, 128, 900.0), cell(32, 256, 1800.0)])
    assert set(notes) == {(1, 128), (1, 256)}
    assert notes[(1, 256)].startswith("faster than b1×128 (740.78 ms)")
    assert notes[(1, 128)].startswith("slower than b1×256 (127.86 ms)")
    assert order_notes([cell(1, 128, 10.0), cell(1, 256, 8.0), cell(32, 128, 9.0)]) == {}  # within the margin


def test_the_machine_record_and_a_busy_load_are_in_the_header():
    from lean.bench.machine import MachineLog
    from lean.bench.markdown import to_markdown

    log = MachineLog()
    for when in ("before", "during", "during", "after"):
        log.sample(when)
    record = log.record()
    assert record["cpus"] >= 1 and record["during"]["samples"] == 2
    assert {"before", "after"} <= set(record) and "load1_max" in record["during"]
    busy = {"cpus": 2, "before": {"load1": 4.1}, "during": {"samples": 9, "load1_max": 4.3, "load1_median": 4.0,
                                                             "running_median": 6, "cpu_mhz_min": 2400.0,
                                                             "cpu_mhz_max": 2450.0}, "after": {"load1": 3.9}}
    results = _results(_quiet_grid(), machine=busy)
    assert results["run"]["busy"] == ["load average 4.0 on 2 CPUs (median over the timing)",
                                      "5 other tasks running at once on 2 CPUs (median)"]
    report = to_markdown(results)
    assert report.splitlines()[2].startswith("**The machine was busy during this run (load average 4.0 on 2")
    # a load left over from before the run (an install that just finished) is recorded, not held against it
    earlier = {"cpus": 2, "before": {"load1": 6.0}, "during": {"samples": 9, "load1_max": 2.9, "load1_median": 2.1,
                                                               "running_median": 2}, "after": {"load1": 2.0}}
    assert "busy" not in _results(_quiet_grid(), machine=earlier)["run"]
    assert "- machine load: load average 4.1 before, up to 4.3 during (median 4.0), 3.9 after the timing, on 2 " \
           "CPUs; CPU 2400-2450 MHz; 0 of the baseline's 26 cell rounds set aside (0%)" in report


def test_results_of_both_versions_read_and_an_unreliable_cell_round_trips():
    from lean.bench.results import SCHEMA_VERSION, Results

    old = {"schema_version": 1, "baseline": "a", "variants": [
        {"name": "a", "status": "ok", "latency": [{"batch_size": 1, "seq_length": 8, "median_ms": 2.0}]}]}
    assert Results.from_dict(old).variants[0].cells[0].reliable
    new = _results(_busy_grid()) | {"schema_version": SCHEMA_VERSION}
    typed = Results.from_dict(new)
    cell = typed.row("student").cell(1, 128)
    assert not cell.reliable and cell.unreliable == new["variants"][1]["latency"][0]["unreliable"]
    assert typed.to_dict()["variants"][1]["latency"][0] == new["variants"][1]["latency"][0]


def test_min_quiet_rounds_is_checked(monkeypatch, capsys, tmp_path):
    from bench_support import run_cli

    from lean.bench.reliability import MIN_QUIET_ROUNDS
    from lean.bench.runner import BenchOptions
    from lean.errors import LeanError

    for bad in (0, -1, 2.5, True):
        with pytest.raises(LeanError, match="--min-quiet-rounds must be a whole number"):
            BenchOptions(min_quiet_rounds=bad)
    assert BenchOptions(min_quiet_rounds=8).min_quiet_rounds == 8
    assert BenchOptions().min_quiet_rounds == MIN_QUIET_ROUNDS
    code, out, err = run_cli(monkeypatch, capsys, "bench", "--min-quiet-rounds", "0", "-o", str(tmp_path / "run"))
    assert code == 2 and err.strip().splitlines() == [
        "error: --min-quiet-rounds must be a whole number from 1 to 1000, got 0"]


HOG = "import time\nwhile True:\n    start = time.time()\n    while time.time() - start < {busy}:\n        pass\n    time.sleep({rest})\n"


def test_a_run_beside_cpu_hogs_says_so(tmp_path, tiny_bert_dir, bbc_csv, monkeypatch):
    """The harness on a tiny model with busy loops started beside its timing phase (on and off, so some
    rounds are slower than others): the report marks the affected cells, or at least its load record and
    opening line show the load. Which of the two a machine shows depends on how its scheduler shares the
    CPUs. The hogs start once the variant is loaded, so its imports do not wait for them."""
    import json
    import os
    import subprocess
    import sys

    from lean.bench import runner
    from lean.bench.suite import parse_suite

    suite = parse_suite({"name": "hogs", "task": str(bbc_csv), "base": str(tiny_bert_dir), "teacher": [],
                         "baseline": "eager", "measure": {"batch_sizes": [1], "seq_lengths": [16, 32], "warmup": 1,
                                                          "repeats": 13, "threads": 1, "quality": False,
                                                          "timeout_s": 120},
                         "variants": {"eager": {"load": {"attention": "eager"}}}}, "hogs.yaml")
    hogs: list = []
    timed = runner.interleaved_latency

    def beside_hogs(*args):
        hogs.extend(subprocess.Popen([sys.executable, "-c", HOG.format(busy=0.3 + 0.1 * i, rest=0.2)])
                    for i in range(2 * (os.cpu_count() or 1) + 1))
        timed(*args)

    monkeypatch.setattr(runner, "interleaved_latency", beside_hogs)
    try:
        results = runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "run", runs_dir=tmp_path / "cache",
                                                              quiet=True))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert hogs
    machine = results["run"]["machine"]
    assert {"cpus", "before", "during", "after"} <= set(machine) and machine["during"]["samples"] >= 13
    cells = results["variants"][0]["latency"]
    assert all(c.get("median_ms") for c in cells)
    marked = [c for c in cells if c.get("unreliable")]
    assert marked or results["run"].get("busy"), json.dumps(machine)
    report = (tmp_path / "run" / "report.md").read_text().splitlines()
    assert report[2].startswith("**The machine was busy during this run (")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["run"]["machine"] == machine and on_disk["run"].get("busy") == results["run"].get("busy")


def test_lean_optimize_never_chooses_on_an_unreliable_latency(tmp_path):
    from lean.optimize.config import Budget
    from lean.optimize.report import summary, to_markdown
    from lean.optimize.space import Candidate
    from lean.optimize.strategy import Search
    from lean.optimize.trials import Figures, TrialStore

    def candidate(name):
        return Candidate(name, name, "torch", [], {"attention": name}, [], 1.0)  # its own key

    quality = {"accuracy": 0.95}
    figures = {"teacher": Figures(validation=quality, test=quality, latency_ms=100.0),
               # the fastest on paper, but timed while the machine was busy
               "busy": Figures(validation=quality, test=quality, latency_ms=5.0,
                               latency_unreliable="1 of 14 rounds quiet (fewer than 5)"),
               "steady": Figures(validation=quality, test=quality, latency_ms=40.0)}
    search = Search([candidate("busy"), candidate("steady")], candidate("teacher"), lambda c, mode: figures[c.name],
                    Budget(max_drop=1.0), "latency", TrialStore(tmp_path / "trials.jsonl"), log=lambda line: None)
    outcome = search.run()
    assert outcome.chosen.name == "steady" and outcome.met_budget
    busy = next(t for t in outcome.trials if t.name == "busy")
    assert busy.passed and "ranked last" in search.line(busy)
    # a memory objective does not depend on the latency cell: the busy candidate may win it
    assert not Search([], candidate("teacher"), None, Budget(max_drop=1.0), "memory",
                      TrialStore(tmp_path / "m.jsonl")).unreliable(busy)
    # when only the unreliable one passes, it is kept, and the summary and report say its speedup is no figure
    only = Search([candidate("busy")], candidate("teacher"), lambda c, mode: figures[c.name], Budget(max_drop=1.0),
                  "latency", TrialStore(tmp_path / "only.jsonl"), log=lambda line: None).run()
    data = summary(only, Budget(max_drop=1.0), "latency", {"target": {"device": "cpu", "batch_size": 1,
                                                                      "seq_length": 128, "threads": 2}})
    assert data["speedup_unreliable"] == "chosen 1 of 14 rounds quiet (fewer than 5)"
    assert data["chosen_figures"]["latency_unreliable"] == "1 of 14 rounds quiet (fewer than 5)"
    assert "(speedup 20x, unreliable: chosen 1 of 14 rounds quiet" in to_markdown(only, data, Budget(max_drop=1.0))


def test_history_and_compare_leave_unreliable_speedups_out():
    from lean.bench.compare import compare_runs, format_comparison
    from lean.bench.history import baseline_cells, variant_speedups

    results = _results(_busy_grid())
    assert set(variant_speedups(results)["student"]["cells"]) == {"b1x256"}  # b1x128 is no figure to remember
    assert set(baseline_cells(results)) == {"b1x256"}
    comparison = compare_runs(results, _results(_quiet_grid()))
    student = comparison["variants"][1]
    assert set(student["speed"]) == {"b1x256"} and student["unreliable"] == ["b1x128"]
    assert "left out, unreliable in a run: b1x128" in format_comparison(comparison)


def test_the_serve_load_test_report_opens_with_the_same_busy_rule():
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("load_report", Path(__file__).parent.parent / "benchmarks" / "load"
                                                  / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    busy_line, markdown = module.busy_line, module.markdown

    run = json.loads((Path(__file__).parent.parent / "benchmarks" / "results" / "2026-12-07-cpu-serve-load"
                      / "load.json").read_text())
    assert run["machine"]["logical_cpus"] == 2 and busy_line(run) is None
    assert markdown(run).startswith(f"# lean serve load test, {run['date']}\n\n- machine:")
    busy = run | {"load_before": "18:32:10 up  1:03,  0 user,  load average: 22.60, 22.19, 18.82"}
    assert busy_line(busy).startswith("**The machine was busy during this load test (load average up to 22.60 on 2")
    assert markdown(busy).splitlines()[2] == busy_line(busy)
