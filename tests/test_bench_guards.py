"""Tests for what guards a lean bench run: options checked up front, locks on the output and on each
runs-cache entry, an unreadable lean.json as one variant's error, an honest `interrupted`, remote code
only from the command line, and measure.split.

    python -m pytest tests/test_bench_guards.py -x -q
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
from bench_support import fake_steps, run_cli, tiny_suite

from lean.bench.suite import parse_suite
from lean.errors import LeanError

FIXTURES = (fake_steps,)  # pytest finds fixtures by their name in the test module


@pytest.mark.parametrize("options, words", [
    ({"threads": -2}, "--threads"), ({"threads": 0}, "--threads"), ({"timeout_s": -1}, "--timeout"),
    ({"timeout_s": math.nan}, "--timeout"), ({"timeout_s": math.inf}, "--timeout"),
])
def test_bench_options_are_checked_up_front(options, words):
    from lean.bench.runner import BenchOptions

    with pytest.raises(LeanError, match=words) as info:
        BenchOptions(**options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args, words", [
    (["--threads", "-2"], "--threads"), (["--timeout", "-1"], "--timeout"), (["--timeout", "nan"], "--timeout"),
    (["--runs-dir", "FILE"], "is a file"),
])
def test_cli_bad_options_exit_2_with_one_line_and_write_nothing(args, words, monkeypatch, capsys, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    args = [str(file) if a == "FILE" else a for a in args]
    code, _, err = run_cli(monkeypatch, capsys, "bench", *args, "-o", str(tmp_path / "out"))
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and file.read_text() == "x"


def test_list_says_when_remote_code_is_on(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "bench", "--list", "--trust-remote-code")
    assert code == 0 and out.splitlines()[0].startswith("remote code: ON") and "int8-dynamic" in out
    code, out, _ = run_cli(monkeypatch, capsys, "bench", "--list")
    assert code == 0 and "remote code" not in out


def test_a_second_run_on_the_same_output_fails_at_once(tmp_path, tiny_bert_dir, bbc_csv, monkeypatch, capsys):
    from lean.bench.runner import BenchOptions, run_bench
    from lean.locks import output_lock

    data = tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    suite = parse_suite({**data, "variants": {"needs-gpu": data["variants"]["needs-gpu"]}, "baseline": "needs-gpu"})
    out = tmp_path / "out"
    with output_lock(out, "bench run"):  # another run holds it
        with pytest.raises(LeanError, match="in use by another lean run") as info:
            run_bench(suite, BenchOptions(output=out, runs_dir=tmp_path / "cache", quiet=True))
        assert "\n" not in str(info.value) and not out.exists()
        suite_file = tmp_path / "s.json.yaml"
        suite_file.write_text(json.dumps({**data, "baseline": "x", "variants": {"x": data["variants"]["needs-gpu"]}}))
        code, _, err = run_cli(monkeypatch, capsys, "bench", str(suite_file), "-o", str(out))
        assert code == 2 and "in use by another lean run" in err and len(err.strip().splitlines()) == 1
    results = run_bench(suite, BenchOptions(output=out, runs_dir=tmp_path / "cache", quiet=True))  # released
    assert results["variants"][0]["status"] == "skipped" and (out / "results.json").is_file()


def _tfidf_entry(chains, task):
    from lean.bench.classical import TfidfLogregConfig
    from lean.steps import config_hash

    key = config_hash("tfidf-logreg", TfidfLogregConfig(), "task:" + json.dumps(task, sort_keys=True))
    return chains.runs_dir / f"tfidf-logreg-{key}"


def test_a_runs_cache_entry_being_built_or_unreadable_is_that_variants_error(tmp_path, bbc_csv):
    from lean.bench.chains import BuildError, Chains
    from lean.bench.kinds import KINDS
    from lean.locks import output_lock

    kind = KINDS["tfidf-logreg"]
    task = {"spec": str(bbc_csv), "text_column": None, "label_column": None, "split_seed": 42}
    chains = Chains(None, tmp_path / "cache", tmp_path / "logs", lambda text: None, 120)
    (tmp_path / "logs").mkdir()
    entry = _tfidf_entry(chains, task)
    with output_lock(entry, "runs-cache entry"):  # another run is building it
        with pytest.raises(BuildError, match="in use by another lean run") as info:
            chains.fitted(kind, task, "tfidf-logreg", [])
    assert "\n" not in info.value.error and not entry.exists()  # nothing was built beside the other run

    for damaged in ("{truncated", "[]"):
        chains = Chains(None, tmp_path / "cache", tmp_path / "logs", lambda text: None, 120)
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "lean.json").write_text(damaged)
        records: list = []
        with pytest.raises(BuildError, match="lean.json") as info:
            chains.fitted(kind, task, "tfidf-logreg", records)
        assert records[0]["cached"] is True and "delete" in info.value.error and "\n" not in info.value.error
        assert (entry / "lean.json").read_text() == damaged  # the user's files are left as they were


def test_trained_max_length_walks_parents_and_refuses_an_unreadable_manifest(tmp_path):
    from lean.bench.chains import trained_max_length

    parent, child = tmp_path / "parent", tmp_path / "child"
    parent.mkdir()
    child.mkdir()
    (parent / "lean.json").write_text(json.dumps({"config": {"max_length": 96}}))
    (child / "lean.json").write_text(json.dumps({"config": {}, "parent": {"resolved": str(parent)}}))
    assert trained_max_length(child) == 96 and trained_max_length(tmp_path) == 128
    for damaged in ("{cut", "[1, 2]", json.dumps({"config": []})):  # truncated, not an object, a field mistyped
        (parent / "lean.json").write_text(damaged)
        with pytest.raises(LeanError, match="lean.json"):
            trained_max_length(parent)


def test_one_bad_directory_is_its_own_row_and_the_run_goes_on(tmp_path, tiny_bert_dir):
    from lean.bench.runner import BenchOptions, run_bench
    from lean.bench.suite import MeasureConfig, directories_suite

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bert_dir, bad)
    (bad / "lean.json").write_text('{"step": "finetune", "config": ')  # cut short
    measure = MeasureConfig(batch_sizes=[2], seq_lengths=[32], warmup=1, repeats=2, threads=1, max_eval_samples=20)
    suite = directories_suite([str(tiny_bert_dir), str(bad)], measure=measure)
    results = run_bench(suite, BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache", quiet=True))
    good, broken = results["variants"]
    assert good["status"] == "ok" and good["latency"][0]["median_ms"] > 0
    assert broken["status"] == "failed" and "lean.json" in broken["error"] and "latency" not in broken
    assert results["run"]["interrupted"] is False
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["status"] for r in written["variants"]] == ["ok", "failed"]


def test_a_run_stopped_by_an_error_is_recorded_as_interrupted(tmp_path, tiny_bert_dir, bbc_csv, monkeypatch):
    from lean.bench import runner

    class FailSecond(runner.VariantRun):
        def row(self):
            if self.index == 1:
                raise RuntimeError("the disk went away")
            return super().row()

    data = tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    suite = parse_suite({**data, "baseline": "needs-gpu",
                         "variants": {k: data["variants"][k] for k in ("needs-gpu", "fp32")}})
    monkeypatch.setattr(runner, "VariantRun", FailSecond)
    with pytest.raises(RuntimeError):
        runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache", quiet=True))
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["run"]["interrupted"] is True and written["run"]["not_run"] == ["fp32"]
    assert "the disk went away" in written["run"]["error"]


def test_measure_split_scores_the_validation_split_when_asked(tmp_path, bbc_csv):
    from lean.bench.classical import fit_tfidf_logreg
    from lean.bench.runner import BenchOptions, run_bench
    from lean.data import load_task
    from lean.metrics import classification_metrics

    suite = parse_suite({"task": str(bbc_csv), "base": "minilm-l6", "teacher": [], "baseline": "tfidf-logreg",
                         "measure": {"split": "validation", "latency": False, "threads": 1},
                         "variants": {"tfidf-logreg": {"kind": "tfidf-logreg"}}})
    results = run_bench(suite, BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache", quiet=True))
    quality = results["variants"][0]["quality"]
    task = load_task(str(bbc_csv))
    fitted = fit_tfidf_logreg(task.train.texts, task.train.labels)
    expected = classification_metrics(task.validation.labels, fitted.predict(task.validation.texts).tolist(),
                                      task.label_names)
    assert quality["split"] == "validation" and quality["n"] == len(task.validation) != len(task.test)
    assert quality["accuracy"] == expected["accuracy"]
    assert results["suite"]["measure"]["split"] == "validation"
    assert "full validation split" in (tmp_path / "out" / "report.md").read_text()
