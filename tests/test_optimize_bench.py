"""lean optimize end to end through the real adapter: tiny models, a 100-row task, `lean bench` underneath.

The harness's `measure: {split: validation}` key may not be in this lean.bench yet: where it is not,
the `split_key` fixture stands in for it (the suite parser drops the key and remembers it, the run's
rows are labelled with the split that was asked for), so the quality figures are then the test
split's under both names. Everything else (builds, the cache, subprocesses, results.json) is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lean.optimize import Budget, OptimizeConfig, Target, optimize
from lean.optimize.adapter import BenchMeasure, figures_from_results, split_supported
from lean.optimize.space import parse_space


SPACE = {
    "name": "tiny", "device": "cpu", "reference": {"load": {"attention": "eager"}},
    "measure": {"warmup": 1, "repeats": 3, "max_cell_s": 0.5},  # tiny models: a few calls tell their latency
    "students": {},  # students and probes: tests/test_optimize.py (builds of minutes are no test's business)
    "runtimes": {"sdpa": {"load": {"attention": "sdpa"}},
                 "int8": {"steps": [{"quantize": {"method": "dynamic-int8", "evaluate": False}}]}},
}


@pytest.fixture
def split_key(monkeypatch):
    """Stand in for the harness's measure.split where this lean.bench lacks it (see the module docstring)."""
    if split_supported():
        yield
        return
    import lean.bench.runner as runner
    import lean.bench.suite as suite_module
    import lean.optimize.adapter as adapter

    asked: dict[str, str] = {}
    parse, run = suite_module.parse_suite, runner.run_bench

    def parse_without_split(data, file=None, check_steps=True):
        data = json.loads(json.dumps(data))
        default = data["measure"].pop("split", "test")
        for name, variant in data["variants"].items():
            asked[name] = (variant.get("measure") or {}).pop("split", default)
        return parse(data, file, check_steps)

    def run_labelled(suite, options=None, console=None):
        results = run(suite, options, console)
        for row in results["variants"]:
            if row.get("quality"):
                row["quality"]["split"] = asked[row["name"]]
        return results

    monkeypatch.setattr(adapter, "split_supported", lambda: True)
    monkeypatch.setattr(suite_module, "parse_suite", parse_without_split)
    monkeypatch.setattr(runner, "run_bench", run_labelled)
    yield


def test_suite_asks_validation_for_the_choice_and_test_for_the_report(tmp_path):
    student = {"steps": [{"distill": {"student_layers": 1}}]}
    space = parse_space({**SPACE, "students": {"l1": student}, "probe": {"max_train_samples": 8}}, "tiny.yaml")
    measure = BenchMeasure({"spec": "bbc-news"}, "teacher-dir", "teacher-dir", Target(batch_size=2, seq_length=32),
                           tmp_path / "cache", tmp_path / "bench")
    candidate = next(c for c in space.candidates() if c.name == "l1+int8")
    data = measure.suite_data(candidate, "full")
    assert data["measure"]["split"] == "validation" and data["baseline"] == "candidate"
    assert data["variants"]["candidate@test"]["measure"] == {"split": "test", "latency": False}
    assert data["variants"]["candidate"]["steps"] == candidate.chain()
    assert data["measure"]["batch_sizes"] == [2] and data["measure"]["seq_lengths"] == [32]
    assert candidate.probe_steps[0].options == {"student_layers": 1, "max_train_samples": 8}
    probe = measure.suite_data(candidate, "probe")
    assert probe["measure"]["quality"] is False and list(probe["variants"]) == ["candidate"]


def test_figures_are_read_from_results_and_a_test_split_row_is_never_taken_for_validation():
    from lean.errors import LeanError

    cell = {"batch_size": 1, "seq_length": 128, "median_ms": 12.5, "throughput_sps": 80.0}
    row = {"name": "candidate", "status": "ok", "model_dir": "/m", "quality": {"accuracy": 0.9, "split": "validation"},
           "latency": [{**cell, "seq_length": 256, "median_ms": 30.0}, cell], "memory": {"peak_rss_mb": 500.0},
           "size": {"weights_bytes": 1234}, "chain": [{"cached": False, "build_s": 3.0}, {"cached": True, "build_s": 0}]}
    test = {"name": "candidate@test", "status": "ok", "quality": {"accuracy": 0.8, "split": "test"}}
    figures = figures_from_results({"variants": [row, test]}, Target())
    assert (figures.latency_ms, figures.throughput_sps, figures.peak_memory_mb, figures.weights_bytes) == (12.5, 80.0, 500.0, 1234)
    assert figures.validation["accuracy"] == 0.9 and figures.test["accuracy"] == 0.8
    assert (figures.steps_built, figures.build_s) == (1, 3.0)
    row["quality"]["split"] = "test"  # a harness that ignored measure.split
    with pytest.raises(LeanError, match="scored the test split"):
        figures_from_results({"variants": [row, test]}, Target())


@pytest.mark.slow
def test_end_to_end_on_a_tiny_model(tmp_path, tiny_bert_dir, bbc_csv, split_key):
    space_file = tmp_path / "space.json"  # JSON is YAML
    space_file.write_text(json.dumps({**SPACE, "classical": {"tfidf-logreg": {}}}))

    def config(**options):
        return OptimizeConfig(model=str(tiny_bert_dir), task=str(bbc_csv), output=str(tmp_path / "run"),
                              budget=Budget(max_drop=99.0), target=Target(device="cpu", batch_size=1, seq_length=32, threads=1),
                              space=str(space_file), runs_dir=str(tmp_path / "cache"), **options)

    lines: list[str] = []
    summary = optimize(config(), log=lines.append)
    trials = {t["name"]: t for t in json.loads((tmp_path / "run" / "trials.json").read_text())}
    assert list(trials) == ["teacher", "teacher+sdpa", "teacher+int8", "tfidf-logreg"]
    assert len(lines) == 5 and lines[0].startswith("teacher: measuring it first")  # then one line per trial
    teacher = trials["teacher"]
    assert teacher["status"] == "ok" and teacher["latency_ms"] > 0 and teacher["weights_bytes"] > 0
    assert teacher["validation"]["split"] == "validation" and teacher["test"]["split"] == "test"
    assert all(t["status"] == "ok" and t["passed"] for n, t in trials.items() if n != "teacher")
    assert trials["teacher+sdpa"]["steps_built"] == 0 and trials["teacher+int8"]["steps_built"] == 1
    assert trials["teacher+int8"]["weights_bytes"] < teacher["weights_bytes"]
    # fitted on the train split once, then measured like the chains; it runs under lean.runtime as best/ would
    tfidf = trials["tfidf-logreg"]
    assert tfidf["chain"] == [] and tfidf["steps_built"] == 1 and tfidf["validation"]["n"] == teacher["validation"]["n"]
    from lean.runtime import load

    assert load(tfidf["model_dir"]).predict(["Shares rose after profits beat forecasts"])[0]["label"] in \
        {"business", "entertainment", "politics", "sport", "tech"}
    chosen = trials[summary["chosen"]]
    fastest = min((t for n, t in trials.items() if n != "teacher"), key=lambda t: t["latency_ms"])
    assert chosen is fastest and summary["speedup"] == pytest.approx(teacher["latency_ms"] / chosen["latency_ms"], rel=1e-2)
    best = tmp_path / "run" / "best"
    assert json.loads((best / "lean.json").read_text()) == json.loads((Path(chosen["model_dir"]) / "lean.json").read_text())

    # resumed: every trial is read back, nothing is measured or built again
    runs = sorted(p.name for p in (tmp_path / "run" / "bench").iterdir())
    again = optimize(config(resume=True), log=lines.append)
    assert sorted(p.name for p in (tmp_path / "run" / "bench").iterdir()) == runs
    assert again["chosen"] == summary["chosen"] and again["measured_now"] == {"full": 0, "probe": 0}
