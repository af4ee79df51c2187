"""Tests for the readers of finished runs: lean.bench.compare, lean.bench.history, the interval in
report.md, and benchmarks/estimators.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _run_results(acc: float, speedup: float) -> dict:
    cell = lambda b, s, ms, x: {"batch_size": b, "seq_length": s, "median_ms": ms, "speedup": x}  # noqa: E731
    return {"baseline": "sdpa", "variants": [
        {"name": "sdpa", "status": "ok", "quality": {"accuracy": 0.98, "macro_f1": 0.97},
         "latency": [cell(1, 128, 50.0, 1.0)]},
        {"name": "int8", "status": "ok", "quality": {"accuracy": acc, "macro_f1": 0.96},
         "latency": [cell(1, 128, 50.0 / speedup, speedup)]},
        {"name": "fp16", "status": "skipped"}]}


def test_speedup_interval_spans_how_far_the_ratio_moved_over_the_rounds():
    from lean.bench.markdown import to_markdown
    from lean.bench.report import finalize
    from lean.bench.stats import interval_spread, speedup_interval

    def visits(per_round):
        return [{"round": r, "ms": ms} for r, ms in enumerate(per_round)]

    steady_base, steady = visits([[10.0, 10.2, 9.9]] * 8), visits([[5.0, 5.1, 4.9]] * 8)
    low, high = speedup_interval(steady_base, steady)
    assert low == high == pytest.approx(10.0 / 5.0, rel=1e-3)  # the same in every round: no spread
    # rounds 6 and 7 are a slow spell that slows the variant by half and the baseline by a tenth
    base = visits([[10.0, 10.2, 9.9]] * 6 + [[11.0, 11.2, 10.9]] * 2)
    mine = visits([[5.0, 5.1, 4.9]] * 6 + [[7.5, 7.6, 7.4]] * 2)
    low, high = speedup_interval(base, mine)
    assert low < 10.0 / 5.0 - 0.2 and high == pytest.approx(2.0, rel=0.02)
    assert speedup_interval(base, mine) == [low, high]  # deterministic
    assert speedup_interval(None, mine) is None and speedup_interval(base, []) is None

    results = {"baseline": "a", "suite": {"name": "s"}, "run": {}, "environment": {}, "task": {}, "variants": [
        {"name": n, "status": "ok", "config": {}, "latency": [
            {"batch_size": 1, "seq_length": 8, "median_ms": m, "count": 24, "visits": v}]}
        for n, m, v in (("a", 10.0, base), ("b", 5.0, mine))]}
    finalize(results)
    a, b = results["variants"][0]["latency"][0], results["variants"][1]["latency"][0]
    assert "speedup_interval" not in a and b["speedup_interval"] == [low, high]
    assert interval_spread(b) == pytest.approx(max(1 - low / 2.0, high / 2.0 - 1))
    assert f"5.00 (2.00× ±{interval_spread(b):.0%})" in to_markdown(results)


def test_a_run_is_told_when_its_baseline_ran_off_its_earlier_runs_on_the_machine(tmp_path):
    from lean.bench.history import (
        HISTORY,
        KEEP,
        machine_state,
        note_machine_state,
        read_history,
        spell_text,
    )
    from lean.bench.markdown import to_markdown

    def run(b1_ms, threads=2, speedup=2.0):
        results = _run_results(0.97, speedup)
        results["variants"][0]["latency"][0]["median_ms"] = b1_ms
        results.update(suite={"name": "s"}, environment={"cpu": "AMD EPYC"},
                       run={"threads": threads, "device": "cpu", "started": "t", "runs_dir": str(tmp_path)})
        return results

    empty = {"baseline_vs_earlier": {}, "spell": [], "speedups_vs_earlier": {}, "speedups_off": []}
    first = run(25.0)
    note_machine_state(first, tmp_path)  # nothing earlier: nothing to tell, but the run joins the history
    assert first["run"]["machine_state"] == {"earlier_runs": 0, **empty}
    assert read_history(tmp_path / HISTORY)[0]["speedups"]["int8"]["cells"] == {"b1x128": 2.0}
    # one earlier run is enough to tell that the two differ (not which of them is off)
    alone = machine_state(run(31.0, speedup=1.5), read_history(tmp_path / HISTORY))
    assert alone["spell"] == ["b1x128"] and alone["speedups_off"] == ["int8 b1x128"]
    text = spell_text({"run": {"machine_state": alone}})
    assert text.startswith("this run's baseline ran +24% at b1x128 against its one earlier run on this machine; "
                           "1 of 1 speedups differ by more than 10% from that run (int8 b1x128 -25%)")
    for ms in (24.0, 26.0):
        note_machine_state(run(ms), tmp_path)
    assert len(read_history(tmp_path / HISTORY)) == 3
    usual = run(26.5, speedup=2.1)
    note_machine_state(usual, tmp_path)  # 6% over the median of 25, 24, 26: the machine's usual spread
    assert usual["run"]["machine_state"] == {"earlier_runs": 3, "baseline_vs_earlier": {"b1x128": 1.06}, "spell": [],
                                             "speedups_vs_earlier": {"int8": {"b1x128": 1.05}}, "speedups_off": []}
    assert spell_text(usual) is None and "- **machine state**: this run" not in to_markdown(usual)
    assert "compared with the median of the 3 earlier runs of this suite on this machine" in to_markdown(usual)
    assert "is named above; none was." in to_markdown(usual)
    slow = run(31.0)
    note_machine_state(slow, tmp_path)
    assert slow["run"]["machine_state"]["spell"] == ["b1x128"] and slow["run"]["machine_state"]["speedups_off"] == []
    text = spell_text(slow)
    assert text.startswith("this run's baseline ran +22% at b1x128 against the median of its 4 earlier runs")
    assert "- **machine state**: this run's baseline ran +22%" in to_markdown(slow) and "\n" not in text
    assert "is named above; trust the speedups that agree." in to_markdown(slow)
    assert "compared with" not in to_markdown(first)  # nothing earlier: no guide line either
    # a speedup that moved while the baseline held is named too
    moved = run(25.0, speedup=2.5)
    note_machine_state(moved, tmp_path)
    state = moved["run"]["machine_state"]
    assert state["spell"] == [] and state["speedups_off"] == ["int8 b1x128"]
    assert spell_text(moved).startswith("1 of 1 speedups differ by more than 10% from the median of its 5 earlier runs "
                                        "(int8 b1x128 +25%)")
    # a variant built another way under the same name is not compared with the old one
    rebuilt = run(25.0, speedup=3.0)
    rebuilt["variants"][1]["chain"] = [{"config_hash": "other"}]
    assert machine_state(rebuilt, read_history(tmp_path / HISTORY))["speedups_vs_earlier"] == {}
    # other threads (another key) have no history yet; a line cut short by a killed run is skipped
    with (tmp_path / HISTORY).open("a") as f:
        f.write('{"key": {"suite"')
    assert machine_state(run(31.0, threads=1), read_history(tmp_path / HISTORY))["earlier_runs"] == 0
    # only the latest KEEP runs count
    entries = read_history(tmp_path / HISTORY)
    entries = [dict(entries[0], cells={"b1x128": 100.0})] * 50 + [dict(entries[0], cells={"b1x128": 25.0})] * KEEP
    assert machine_state(run(25.0), entries)["baseline_vs_earlier"] == {"b1x128": 1.0}
    failed = run(25.0)
    failed["variants"][0]["status"] = "failed"
    assert machine_state(failed, entries) is None


def test_compare_runs_checks_quality_exactly_and_speed_ratios_within_tolerance(tmp_path, capsys):
    from lean.bench.compare import compare_runs, format_comparison, main

    same = compare_runs(_run_results(0.97, 2.0), _run_results(0.97, 2.15))  # +7.5%
    assert same["agree"] and [v["name"] for v in same["variants"]] == ["sdpa", "int8"]
    assert same["variants"][1]["speed"]["b1x128"] == (2.0, 2.15, 0.075)
    slower = compare_runs(_run_results(0.97, 2.0), _run_results(0.97, 1.7))  # -15%
    assert not slower["agree"] and slower["variants"][1]["worst_speed_difference"] == pytest.approx(0.15)
    assert not compare_runs(_run_results(0.97, 2.0), _run_results(0.9701, 2.0))["agree"]  # quality must be equal
    unfinished = _run_results(0.97, 2.0)
    unfinished["variants"][1]["latency"] = []  # a run still timing, or stopped: no speed to agree on
    partial = compare_runs(_run_results(0.97, 2.0), unfinished)
    assert not partial["agree"] and partial["variants"][1]["unmatched"] == ["b1x128"]
    for name, results in (("a", _run_results(0.97, 2.0)), ("b", _run_results(0.97, 1.7))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    assert main([str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "DIFF int8" in capsys.readouterr().out
    assert main([str(tmp_path / "a"), str(tmp_path / "none")]) == 2
    assert "no results.json" in capsys.readouterr().err
    # a difference past the tolerance is still a disagreement, but one both runs' intervals cover is marked
    a, b = _run_results(0.97, 2.0), _run_results(0.97, 1.7)
    a["variants"][1]["latency"][0]["speedup_interval"] = [1.8, 2.1]
    b["variants"][1]["latency"][0]["speedup_interval"] = [1.6, 1.85]
    noisy = compare_runs(a, b)
    assert not noisy["agree"] and noisy["variants"][1]["within_intervals"] == ["b1x128"]
    text = format_comparison(noisy)
    assert "(-15.0%*)" in text and "0 of 1 speed ratios within 10%; 1 of the 1 others (*)" in text
    assert "within a run" in text and "beyond both runs' spread" not in text
    b["variants"][1]["latency"][0]["speedup_interval"] = [1.6, 1.75]
    apart = compare_runs(a, b)
    assert apart["variants"][1]["within_intervals"] == []
    text = format_comparison(apart)  # no interval covers it: said so, not blamed on noise within a run
    assert "0 of the 1 others (*) have overlapping 90% intervals; 1 differ beyond both runs' spread" in text
    assert "within a run" not in text

    # --rounds: one run's cells round by round; a run without per-round timings is a one-line error
    a["variants"][1]["latency"][0]["visits"] = [{"round": 0, "ms": [25.0]}, {"round": 1, "ms": [24.0, 26.0, 40.0]}]
    (tmp_path / "a" / "results.json").write_text(json.dumps(a))
    assert main(["--rounds", str(tmp_path / "a")]) == 0
    assert "int8 b1x128: 25 26" in capsys.readouterr().out
    assert main(["--rounds", str(tmp_path / "b")]) == 2
    assert "no per-round timings" in capsys.readouterr().err
    assert main([str(tmp_path / "a")]) == 2 and "two run directories" in capsys.readouterr().err


def test_estimators_script_counts_agreeing_speedups_under_both_medians(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).parent.parent / "benchmarks" / "estimators.py"
    spec = importlib.util.spec_from_file_location("estimators", script)
    estimators = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(estimators)

    def run(name, base_ms, mine_ms):
        def cells(calls):
            return [{"batch_size": 1, "seq_length": 8, "visits": [{"round": 0, "ms": calls, "quiet": True}]}]

        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"baseline": "a", "variants": [
            {"name": "a", "status": "ok", "latency": cells(base_ms)},
            {"name": "b", "status": "ok", "latency": cells(mine_ms)}]}))

    # b's calls fall in two groups: one call changing sides moves the middle call 16%, the HD median 4%
    run("r1", [10.0] * 11, [2.50] * 5 + [2.90] * 6)
    run("r2", [10.0] * 11, [2.50] * 6 + [2.90] * 5)
    assert estimators.main([str(tmp_path / "r1"), str(tmp_path / "r2")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("middle call: 0 of 1 speedups within 10%, 0 of 1 run pairs") and "b b1x8 1" in out[0]
    assert out[1] == "Harrell-Davis: 1 of 1 speedups within 10%, 1 of 1 run pairs agree on all"
    # --quiet-tolerance chooses the quiet rounds again: a round in which both ran slower (marked quiet
    # in the file) is set aside, and the runs agree
    def visits(*rounds):
        return [{"batch_size": 1, "seq_length": 8, "visits": [{"round": r, "ms": ms, "quiet": True}
                                                              for r, ms in enumerate(rounds)]}]

    for name, base, mine in (("q1", visits([10.0] * 3, [20.0] * 3), visits([5.0] * 3, [5.5] * 3)),
                             ("q2", visits([10.0] * 3), visits([5.0] * 3))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"baseline": "a", "variants": [
            {"name": "a", "status": "ok", "latency": base}, {"name": "b", "status": "ok", "latency": mine}]}))
    runs = [str(tmp_path / "q1"), str(tmp_path / "q2")]
    estimators.main(runs)
    assert capsys.readouterr().out.splitlines()[1].startswith("Harrell-Davis: 0 of 1 speedups within 10%")
    estimators.main(runs + ["--quiet-tolerance", "0.1"])
    assert capsys.readouterr().out.splitlines()[1].startswith("Harrell-Davis: 1 of 1 speedups within 10%")
