"""Tests for lean.bench.stats: quantiles, a cell's figures, intervals, quiet rounds, Pareto fronts, each
against hand values or a reference implementation."""

from __future__ import annotations

import pytest


def test_percentiles_and_pareto_front_against_hand_values():
    from lean.bench.stats import pareto_front, percentiles
    from lean.bench.worker import classify_error

    p = percentiles([0.001 * i for i in range(1, 101)])  # 1..100 ms
    # Harrell-Davis on 1..100: E[ceil(100 U)] for U ~ Beta(101q, 101(1-q)), i.e. 100q + 0.5
    assert p["median_ms"] == pytest.approx(50.5) and p["p90_ms"] == pytest.approx(90.5, abs=0.01)
    assert p["count"] == 100 and p["min_ms"] == pytest.approx(1.0) and p["max_ms"] == pytest.approx(100.0)
    points = [("a", 10.0, 0.90), ("b", 5.0, 0.80), ("c", 20.0, 0.85), ("d", 30.0, 0.95)]
    assert [p[0] for p in pareto_front(points)] == ["b", "a", "d"]  # c is beaten by a on both
    assert classify_error(MemoryError()) == "oom" and classify_error(ValueError("x")) == "failed"


def test_harrell_davis_quantile_matches_scipy_and_moves_less_than_the_middle_sample():
    import random
    import statistics

    from scipy.stats.mstats import hdquantiles

    from lean.bench.stats import quantile

    rng = random.Random(3)
    sample = [rng.lognormvariate(3, 0.4) for _ in range(37)]
    for q in (0.5, 0.9, 0.99):
        assert quantile(sample, q) == pytest.approx(float(hdquantiles(sample, prob=[q])[0]), rel=1e-9)
    assert quantile([7.0], 0.5) == 7.0
    # a cell whose calls fall in two groups: one call changing sides moves the middle sample 16%
    a, b = [250.0] * 5 + [290.0] * 6, [250.0] * 6 + [290.0] * 5
    assert statistics.median(a) / statistics.median(b) == pytest.approx(1.16)
    assert 1 < quantile(a, 0.5) / quantile(b, 0.5) < 1.08


def _visits(per_round):
    return [{"round": r, "ms": list(ms)} for r, ms in enumerate(per_round)]


def test_quiet_rounds_set_aside_rounds_where_the_variants_ran_slower_together():
    from lean.bench.stats import quantile, quiet_rounds, round_slowness, settle_cell

    # rounds 2 and 3: the machine slowed down, the baseline by 20% and the others by 50-60%;
    # round 5: one variant alone had a slow visit (its own noise, not the machine's)
    base = _visits([[10.0, 10.1]] * 2 + [[12.0, 12.1]] * 2 + [[10.0, 10.2]] * 4)
    onnx = _visits([[4.0, 4.1]] * 2 + [[6.4, 6.5]] * 2 + [[4.0], [5.6], [4.1], [4.0]])
    int8 = _visits([[5.0, 5.1]] * 2 + [[7.5, 7.6]] * 2 + [[5.0, 5.0]] * 4)
    slowness = round_slowness({"base": base, "onnx": onnx, "int8": int8})
    assert slowness[0] == pytest.approx(1.0, abs=0.02) and slowness[2] == pytest.approx(1.5, abs=0.02)
    assert quiet_rounds({"base": base, "onnx": onnx, "int8": int8}) == {0, 1, 4, 5, 6, 7}
    assert quiet_rounds({"base": base}) == {0, 1, 4, 5, 6, 7}  # one variant: its own rounds decide
    assert quiet_rounds({"base": base, "onnx": onnx}, tolerance=1.0) == set(range(8))  # nothing that slow
    assert quiet_rounds({}) == set()

    # the cell's figures come from the quiet rounds, the all-rounds median stays beside them
    cell = {"batch_size": 1, "seq_length": 128, "median_ms": 4.1, "count": 12}
    settle_cell(cell, onnx, {0, 1, 4, 5, 6, 7})
    quiet_calls = [4.0, 4.1, 4.0, 4.1, 4.0, 5.6, 4.1, 4.0]  # rounds 0, 1, 4-7
    assert cell["count"] == 8 and cell["median_ms"] == round(quantile(quiet_calls, 0.5), 4)
    assert 4.0 < cell["median_ms"] < 4.2 and cell["all_rounds"] == {"median_ms": 4.1, "count": 12}
    assert cell["rounds"] == {"quiet": 6, "of": 8} and [v["quiet"] for v in cell["visits"]] == [
        True, True, False, False, True, True, True, True]
    assert cell["throughput_sps"] == pytest.approx(1000 / cell["median_ms"], abs=1e-3)
    steady = {"batch_size": 1, "seq_length": 128, "median_ms": 10.0, "count": 2}
    settle_cell(steady, _visits([[10.0], [10.0]]), {0, 1})  # every round quiet: the figures stand as they are
    assert "all_rounds" not in steady and steady["count"] == 2 and steady["rounds"] == {"quiet": 2, "of": 2}
