"""Tests for lean bench: the suite schema, the variant registry, caching, failure rows, reports.

    python -m pytest tests/test_bench.py -x -q

One tiny suite (a 4-layer 32-wide random BERT, 100 BBC articles, one batch size x one length,
two repeats, one thread) runs once per session; the other tests read its results. Fake steps
(a `copy` step that counts its builds, a `boom` step that raises) are registered from a module
written to a temp dir, so the build subprocesses can import them too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from lean.bench.suite import DEFAULT_SUITE, load_suite, parse_suite
from lean.errors import LeanError

FAKE_STEPS = '''
"""Fake steps for tests/test_bench.py."""
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CopyConfig:
    counter: str = ""
    tag: str = "a"


def copy_run(source, config, out):
    for f in Path(source).iterdir():
        if f.is_file() and f.name != "lean.json":
            shutil.copy(f, Path(out) / f.name)
    with open(config.counter, "a") as fh:
        fh.write(config.tag + "\\n")
    return {}


@dataclass
class BoomConfig:
    message: str = "the boom step always raises"


def boom_run(source, config, out):
    raise RuntimeError(config.message)
'''


def _tiny_suite(base: Path, task: Path, counter: Path, **extra_variants) -> dict:
    variants = {
        "fp32": {"load": {"attention": "eager"}},
        "copied": {"steps": [{"copy": {"counter": str(counter)}}]},
        "boom": {"steps": [{"boom": {}}]},
        "slow": {"measure": {"timeout_s": 0.5}},
        "needs-gpu": {"load": {"dtype": "float16"}, "requires": ["cuda", "no_such_package_xyz"]},
        "tfidf-logreg": {"kind": "tfidf-logreg"},
    }
    variants.update(extra_variants)
    return {"name": "tiny", "task": str(task), "base": str(base), "teacher": [], "baseline": "fp32",
            "measure": {"batch_sizes": [2], "seq_lengths": [64], "warmup": 1, "repeats": 2, "threads": 1,
                        "timeout_s": 300},
            "variants": variants}


@pytest.fixture(scope="module")
def fake_steps(tmp_path_factory):
    from lean.steps import STEPS

    folder = tmp_path_factory.mktemp("fake_steps")
    (folder / "bench_fake_steps.py").write_text(FAKE_STEPS)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        import os

        # no empty entry: "" on PYTHONPATH would put every child's working directory on sys.path
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in [str(folder), os.environ.get("PYTHONPATH")] if p))
        mp.setitem(STEPS, "copy", ("bench_fake_steps:copy_run", "bench_fake_steps:CopyConfig"))
        mp.setitem(STEPS, "boom", ("bench_fake_steps:boom_run", "bench_fake_steps:BoomConfig"))
        yield folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert_dir, bbc_csv, fake_steps):
    """One run of the tiny suite: (results, output dir, runs dir, counter file, suite dict)."""
    from lean.bench.runner import BenchOptions, run_bench

    root = tmp_path_factory.mktemp("bench")
    counter = root / "copy-builds.txt"
    data = _tiny_suite(tiny_bert_dir, bbc_csv, counter)
    suite = parse_suite(data, "tiny.yaml")
    results = run_bench(suite, BenchOptions(output=root / "run1", runs_dir=root / "cache", quiet=True))
    return results, root / "run1", root / "cache", counter, data


def _row(results, name):
    return next(r for r in results["variants"] if r["name"] == name)


# ---- schema ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.update(variantz={}), "variantz"),
    (lambda d: d["measure"].update(repeatz=3), "repeatz"),
    (lambda d: d["variants"]["fp32"].update(stepz=[]), "stepz"),
    (lambda d: d["variants"]["fp32"]["load"].update(attn="sdpa"), "attn"),
    (lambda d: d["variants"]["slow"]["measure"].update(timeout=1), "timeout"),
    (lambda d: d["variants"].update(x={"steps": [{"finetune": {"epoch": 1}}]}), "epoch"),
    (lambda d: d["variants"].update(x={"steps": [{"quantise": {}}]}), "quantise"),
])
def test_unknown_keys_are_one_line_errors_naming_the_key(mutate, key, tmp_path):
    data = _tiny_suite(Path("base"), Path("task.csv"), tmp_path / "c")
    data["variants"] = {k: v for k, v in data["variants"].items() if k not in ("copied", "boom")}
    mutate(data)
    with pytest.raises(LeanError) as info:
        parse_suite(data, "s.yaml")
    message = str(info.value)
    assert re.search(rf"\b{re.escape(key)}\b", message) and "\n" not in message


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(baseline="nope"), "baseline 'nope'"),
    (lambda d: d["variants"]["fp32"]["load"].update(dtype="int3"), "load.dtype"),
    (lambda d: d["variants"]["fp32"].update(kind="svm"), "unknown kind 'svm'"),
    (lambda d: d["measure"].update(batch_sizes=[0]), "batch_sizes"),
    (lambda d: d["variants"]["fp32"].update({"from": "elsewhere"}), "'from' must be"),
    (lambda d: d.pop("task"), "no 'task'"),
])
def test_bad_values_are_one_line_errors(mutate, words, tmp_path):
    data = _tiny_suite(Path("base"), Path("task.csv"), tmp_path / "c")
    data["variants"] = {k: v for k, v in data["variants"].items() if k not in ("copied", "boom")}
    mutate(data)
    with pytest.raises(LeanError, match=words.replace("(", r"\(")):
        parse_suite(data, "s.yaml")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvariants: [unclosed\n")
    with pytest.raises(LeanError, match="not valid YAML at line"):
        load_suite(bad)
    with pytest.raises(LeanError, match="does not exist"):
        load_suite(tmp_path / "none.yaml")


def test_default_and_full_suites_list_their_variants_and_share_the_cache():
    suites = Path(__file__).resolve().parent.parent / "benchmarks" / "suites"
    assert (suites / "default.yaml").resolve() == DEFAULT_SUITE.resolve()  # one file, reachable from an installed package too
    default, full = load_suite(), load_suite(suites / "cpu-full.yaml")
    every = {"fp32", "sdpa", "bf16", "fp16", "tfidf-logreg", "int8-dynamic", "int8-bnb", "nf4-bnb", "fp4-bnb",
             "student-l3", "student-l2", "student-l3+", "onnx-fp32", "onnx-O2", "onnx-int8-dynamic",
             "onnx-int8-static", "onnx-fp16", "lean-attention", "student-l3+onnx-int8"}
    assert every <= set(full.variants)
    # the default suite keeps one row per kind of step, each built exactly as in the full suite (one cache)
    assert {"sdpa", "tfidf-logreg", "int8-dynamic", "student-l3", "onnx-int8-dynamic",
            "student-l3+onnx-int8", "fp16", "lean-attention", "onnx-fp16"} <= set(default.variants)
    assert default.teacher == full.teacher
    for name, variant in default.variants.items():
        assert variant.steps == full.variants[name].steps, name
    # the baseline is the teacher as transformers loads it by default (sdpa); the full suite's is eager
    assert default.baseline == "sdpa" and full.baseline == "fp32"
    assert default.variants["sdpa"].load == full.variants["sdpa"].load
    for suite in (default, full):
        assert suite.base == "minilm-l6" and suite.task == "bbc-news"
        assert {"cuda"} <= set(suite.variants["fp16"].requires) and {"cuda"} <= set(suite.variants["lean-attention"].requires)
        # the student shared by student-l3 and student-l3+onnx-int8 is one chain prefix, so one build
        assert suite.variants["student-l3"].steps[0] == suite.variants["student-l3+onnx-int8"].steps[0]


def test_gpu_suite_parses():
    suite = load_suite(Path(__file__).resolve().parent.parent / "benchmarks" / "suites" / "gpu.yaml")
    assert {"fp16", "bf16", "lean-attention", "onnx-fp16"} <= set(suite.variants)


# ---- registry ----------------------------------------------------------------------------------------

def test_step_options_fill_the_suite_task_only_where_the_step_takes_one(tmp_path, fake_steps):
    from lean.bench.suite import Step, step_options

    suite = parse_suite(_tiny_suite(Path("b"), Path("t.csv"), tmp_path / "c"), check_steps=False)
    finetune = step_options(suite, Step("finetune", {"epochs": 1}))
    assert finetune["task"] == "t.csv" and finetune["split_seed"] == 42 and finetune["epochs"] == 1
    assert step_options(suite, Step("finetune", {"task": "bbc-news"}))["task"] == "bbc-news"  # the user's choice wins
    assert "task" not in step_options(suite, Step("copy", {}))  # CopyConfig has no task field


def test_variant_selection_requirements_and_directories_suite(tmp_path, tiny_bert_dir):
    from lean.bench.runner import missing_requirement, select_variants
    from lean.bench.suite import directories_suite

    suite = parse_suite(_tiny_suite(Path("b"), Path("t.csv"), tmp_path / "c"), check_steps=False)
    assert select_variants(suite, ["tfidf-logreg"]) == ["fp32", "tfidf-logreg"]  # the baseline always runs first
    with pytest.raises(LeanError, match="unknown variant 'nope'"):
        select_variants(suite, ["nope"])
    assert "no_such_package_xyz" in missing_requirement(suite.variants["needs-gpu"], "cuda")
    assert "CUDA" in missing_requirement(suite.variants["needs-gpu"], "cpu")
    assert missing_requirement(suite.variants["fp32"], "cpu") is None

    dirs = directories_suite([str(tiny_bert_dir), str(tiny_bert_dir)])
    assert list(dirs.variants) == ["tiny-bert", "tiny-bert-2"] and dirs.task == "bbc-news"  # task from lean.json
    with pytest.raises(LeanError, match="pass --task"):
        directories_suite([str(tmp_path)])


# ---- measuring helpers ----------------------------------------------------------------------------------

def test_latency_texts_are_real_texts_long_enough_for_the_length():
    from lean.bench.measure import latency_texts

    texts = ["short", "long one", "tiny", "long two"]
    batches, info = latency_texts(texts, [10, 300, 50, 400], batch_size=3, seq_length=256, n_batches=2)
    assert batches == [["long one", "long two", "long one"], ["long two", "long one", "long two"]]
    assert info["pool"] == 2 and info["how"].startswith("truncated")
    _, info = latency_texts(texts, [10, 20, 30, 40], batch_size=2, seq_length=256, n_batches=1)
    assert info["how"].startswith("padded")


def test_percentiles_and_pareto_front_against_hand_values():
    from lean.bench.measure import classify_error, percentiles
    from lean.bench.report import pareto_front

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

    from lean.bench.measure import quantile

    rng = random.Random(3)
    sample = [rng.lognormvariate(3, 0.4) for _ in range(37)]
    for q in (0.5, 0.9, 0.99):
        assert quantile(sample, q) == pytest.approx(float(hdquantiles(sample, prob=[q])[0]), rel=1e-9)
    assert quantile([7.0], 0.5) == 7.0
    # a cell whose calls fall in two groups: one call changing sides moves the middle sample 16%
    a, b = [250.0] * 5 + [290.0] * 6, [250.0] * 6 + [290.0] * 5
    assert statistics.median(a) / statistics.median(b) == pytest.approx(1.16)
    assert 1 < quantile(a, 0.5) / quantile(b, 0.5) < 1.08


def test_time_cell_warms_up_then_repeats_within_the_cell_budget():
    import time

    from lean.bench.measure import time_cell

    calls = []

    def forward(batch):
        calls.append(batch)
        time.sleep(0.02)

    times, warmed = time_cell(forward, lambda: None, ["a", "b"], warmup=3, repeats=4, min_repeats=2, max_cell_s=None)
    assert warmed == 3 and len(times) == 4 and calls == ["a", "b", "a", "a", "b", "a", "b"]
    assert all(t >= 0.02 for t in times)
    calls.clear()
    times, warmed = time_cell(forward, lambda: None, ["a"], warmup=10, repeats=50, min_repeats=3, max_cell_s=0.05)
    assert warmed in (1, 2) and len(times) == 3  # warm-up stops at max_cell_s / 2; timing at max_cell_s, 3 runs at least

    def slow_forward(batch):
        calls.append(batch)
        time.sleep(0.1)

    calls.clear()
    times, warmed = time_cell(slow_forward, lambda: None, ["a"], warmup=3, repeats=2, min_repeats=2, max_cell_s=None)
    assert warmed == 1 and len(calls) == 3  # a call of 0.1 s or more: warm after one


# ---- a whole run --------------------------------------------------------------------------------------

def test_measured_rows_match_references(tiny_run, tiny_bert_dir, bbc_csv):
    import torch

    from lean.bench.classical import fit_tfidf_logreg
    from lean.data import load_task
    from lean.metrics import classification_metrics, predict_logits
    from lean.models import load_model, load_tokenizer

    results, *_ = tiny_run
    fp32 = _row(results, "fp32")
    assert fp32["status"] == "ok", fp32["error"]
    task = load_task(str(bbc_csv))
    model, tok = load_model(str(tiny_bert_dir)), load_tokenizer(str(tiny_bert_dir))
    torch.set_num_threads(1)
    reference = classification_metrics(task.test.labels, predict_logits(model, tok, task.test.texts, 512).argmax(-1).tolist(),
                                       task.label_names)
    assert fp32["quality"]["accuracy"] == reference["accuracy"] and fp32["quality"]["n"] == len(task.test)
    assert _row(results, "copied")["quality"]["accuracy"] == fp32["quality"]["accuracy"]  # same weights, same answer

    classical = fit_tfidf_logreg(task.train.texts, task.train.labels)
    expected = classification_metrics(task.test.labels, classical.predict(task.test.texts).tolist(), task.label_names)
    tfidf = _row(results, "tfidf-logreg")
    assert tfidf["quality"]["accuracy"] == expected["accuracy"]
    # fitted once into the runs dir like a step's directory, and measured from there
    fit, = tfidf["chain"]
    assert fit["step"] == "tfidf-logreg" and fit["cached"] is False and tfidf["model_dir"] == fit["dir"]
    assert tfidf["size"]["weights_bytes"] == sum(f.stat().st_size for f in Path(fit["dir"]).iterdir()
                                                 if f.name != "lean.json")
    assert tfidf["size"]["fit_s"] > 0 and tfidf["timing"]["build_s"] > 0

    assert fp32["size"]["params"] == sum(p.numel() for p in model.parameters())
    assert fp32["size"]["weights_bytes"] == (Path(tiny_bert_dir) / "model.safetensors").stat().st_size
    cell, = fp32["latency"]
    assert (cell["batch_size"], cell["seq_length"], cell["count"]) == (2, 64, 2)
    assert 0 < cell["median_ms"] <= cell["p90_ms"] <= cell["p99_ms"] and cell["speedup"] == 1.0
    assert cell["inputs"]["how"].startswith("truncated") and cell["inputs"]["pool"] > 0
    memory = fp32["memory"]
    assert 0 < memory["bare_rss_mb"] < memory["peak_rss_mb"] and fp32["threads"] == 1
    assert _row(results, "copied")["vs_baseline"]["memory_ratio"] > 0


def test_failures_are_rows_and_the_run_goes_on(tiny_run):
    results, *_ = tiny_run
    statuses = {r["name"]: r["status"] for r in results["variants"]}
    assert statuses == {"fp32": "ok", "copied": "ok", "boom": "failed", "slow": "timeout", "needs-gpu": "skipped",
                        "tfidf-logreg": "ok"}
    boom = _row(results, "boom")
    assert boom["phase"] == "build" and "the boom step always raises" in boom["error"]
    assert "0.5 s" in _row(results, "slow")["error"]
    assert _row(results, "needs-gpu")["error"].startswith("needs")


def test_report_files(tiny_run):
    import csv

    import matplotlib.image

    results, out, *_ = tiny_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["run"]["threads"] == 1
    # the tolerance the quiet rounds were chosen with is the run's, and the reading guide quotes it
    from lean.bench.report import to_markdown
    from lean.bench.rounds import QUIET_TOLERANCE

    assert on_disk["run"]["quiet_tolerance"] == QUIET_TOLERANCE == 0.15
    assert "more than 15% past the cell's quietest round" in (out / "report.md").read_text()
    assert "more than 10% past" in to_markdown({**on_disk, "run": {**on_disk["run"], "quiet_tolerance": 0.1}})
    assert on_disk["environment"]["cpu"] and "torch" in on_disk["environment"]["versions"]
    assert [r["name"] for r in on_disk["variants"]] == ["fp32", "copied", "boom", "slow", "needs-gpu", "tfidf-logreg"]
    assert on_disk["variants"][1]["config"]["steps"][0]["copy"]["counter"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["variant"] for r in rows} == {r["name"] for r in on_disk["variants"]}
    assert float(next(r for r in rows if r["variant"] == "fp32")["median_ms"]) > 0
    report = (out / "report.md").read_text()
    for name in ("fp32", "copied", "tfidf-logreg"):
        assert f"`{name}`" in report
    assert "**failed**" in report and "**timeout**" in report and "**skipped**" in report
    image = matplotlib.image.imread(out / "pareto.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert (out / "logs" / "fp32.measure.log").is_file()
    # latency was timed in turn across the loaded variants (measure.interleave, the default)
    assert json.loads((out / "logs" / "fp32.measure.json").read_text())["interleave"] is True
    assert not any("pending" in r for r in on_disk["variants"])
    # every timed call is kept by round; the figures come from the quiet rounds' calls (all of them when
    # no round was set aside), and the speedups over the baseline get their interval from those rounds
    fp32_cell, = on_disk["variants"][0]["latency"]
    quiet = [v for v in fp32_cell["visits"] if v["quiet"]]
    assert sum(len(v["ms"]) for v in quiet) == fp32_cell["count"] and "speedup_interval" not in fp32_cell
    assert fp32_cell["rounds"] == {"quiet": len(quiet), "of": len(fp32_cell["visits"])}
    assert fp32_cell.get("all_rounds", {"count": fp32_cell["count"]})["count"] == \
        sum(len(v["ms"]) for v in fp32_cell["visits"])
    copied_cell, = _row(on_disk, "copied")["latency"]
    low, high = copied_cell["speedup_interval"]
    assert low <= copied_cell["speedup"] <= high


def test_tfidf_logreg_directory_holds_no_pickle_and_predicts_as_fitted(bbc_csv, tmp_path):
    import numpy as np

    from lean.bench.classical import (TfidfLogregConfig, build_tfidf_logreg, fit_tfidf_logreg,
                                      load_tfidf_logreg)
    from lean.data import load_task
    from lean.models import builtin_model_path, load_tokenizer

    task = {"spec": str(bbc_csv), "text_column": None, "label_column": None, "split_seed": 7}
    out = build_tfidf_logreg(task, TfidfLogregConfig(ngram_max=1), tmp_path / "fit")
    assert sorted(f.name for f in out.iterdir()) == ["lean.json", "vocabulary.json", "weights.safetensors"]
    assert not list(tmp_path.glob(".fit.tmp-*"))  # written through a temp dir, renamed into place
    pipeline, manifest = load_tfidf_logreg(out)
    assert manifest["step"] == "tfidf-logreg" and manifest["task"] == task and manifest["fit_s"] > 0
    loaded = load_task(str(bbc_csv), split_seed=7)
    fitted = fit_tfidf_logreg(loaded.train.texts, loaded.train.labels, TfidfLogregConfig(ngram_max=1))
    assert manifest["labels"] == loaded.label_names and manifest["train_size"] == len(loaded.train)
    assert np.array_equal(pipeline.predict_proba(loaded.test.texts), fitted.predict_proba(loaded.test.texts))
    assert np.array_equal(pipeline.predict(loaded.test.texts), fitted.predict(loaded.test.texts))
    # coef_ in the fitted one's memory layout: a row-major one made scipy copy it on every call
    coef = pipeline.named_steps["logreg"].coef_
    assert coef.flags.f_contiguous == fitted.named_steps["logreg"].coef_.flags.f_contiguous and coef.flags.f_contiguous

    # its latency texts are cut where the transformers' tokenizer cuts them, without importing torch
    script = f"""
import json, sys
from lean.bench.measure import ClassicalBackend
from lean.data import load_task
from lean.models import builtin_model_path
task = load_task({str(bbc_csv)!r}, split_seed=7)
backend = ClassicalBackend({str(out)!r}, {{"tokenizer_dir": str(builtin_model_path("minilm-l6"))}}, task)
backend.forward(backend.prepare(task.test.texts[:4], 16))
print(json.dumps({{"cut": backend.prepare(task.test.texts, 16), "torch": "torch" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    child = json.loads(done.stdout)
    assert child["torch"] is False
    tok = load_tokenizer(str(builtin_model_path("minilm-l6")))
    enc = tok(list(loaded.test.texts), truncation=True, max_length=16, return_offsets_mapping=True)
    assert child["cut"] == [t[:max(end for _, end in o)] for t, o in zip(loaded.test.texts, enc["offset_mapping"])]

    (out / "weights.safetensors").unlink()  # a damaged directory: a one-line error saying what to do
    with pytest.raises(LeanError, match="not a fitted tfidf-logreg directory.*refit") as info:
        load_tfidf_logreg(out)
    assert "\n" not in str(info.value)


def test_a_failed_tfidf_logreg_fit_is_a_build_error_remembered_within_the_run(tmp_path):
    from lean.bench.runner import BuildError, Chains

    chains = Chains(None, tmp_path / "cache", tmp_path / "logs", lambda text: None, 120)
    (tmp_path / "logs").mkdir()
    task = {"spec": str(tmp_path / "missing.csv"), "text_column": None, "label_column": None, "split_seed": 42}
    records: list = []
    with pytest.raises(BuildError) as info:
        chains.classical(task, "tfidf-logreg", records)
    assert info.value.status == "failed" and "tfidf-logreg failed" in info.value.error
    assert "missing.csv" in info.value.error and "\n" not in info.value.error
    assert records[0]["cached"] is False and not list((tmp_path / "cache").iterdir())  # nothing half-written
    with pytest.raises(BuildError, match="fitted for an earlier variant"):  # not fitted again in this run
        chains.classical(task, "tfidf-logreg-2", [])
    assert not (tmp_path / "logs" / "tfidf-logreg-2.tfidf-logreg.build.log").exists()


def test_second_run_reuses_built_steps(tiny_run, monkeypatch, capsys, tmp_path):
    results, _, cache, counter, data = tiny_run
    copied = _row(results, "copied")
    assert copied["chain"][0]["cached"] is False and counter.read_text().splitlines() == ["a"]
    built = Path(copied["model_dir"])
    mtime = (built / "lean.json").stat().st_mtime_ns

    # one variant after another this time (measure.interleave: false), with glibc's own malloc settings
    # (measure.reuse_memory: false): the same figures come out
    second = dict(data, baseline="copied", variants={"copied": data["variants"]["copied"],
                                                     "tfidf-logreg": data["variants"]["tfidf-logreg"]},
                  measure=dict(data["measure"], interleave=False, reuse_memory=False))
    suite_file = tmp_path / "again.yaml"
    suite_file.write_text(yaml.safe_dump(second))
    code, out, err = _cli(monkeypatch, capsys, "bench", str(suite_file), "-o", str(tmp_path / "run2"),
                          "--runs-dir", str(cache))
    assert code == 0, err
    again = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert again["run"]["steps_built"] == 0 and again["variants"][0]["chain"][0]["cached"] is True
    assert counter.read_text().splitlines() == ["a"]  # the copy step did not run again
    assert (built / "lean.json").stat().st_mtime_ns == mtime
    assert again["variants"][0]["quality"]["accuracy"] == copied["quality"]["accuracy"]  # exact across runs
    assert again["variants"][0]["latency"][0]["count"] == copied["latency"][0]["count"] == 2
    assert json.loads((tmp_path / "run2" / "logs" / "copied.measure.json").read_text())["interleave"] is False
    # each finished run joins the machine's history of baseline medians (lean.bench.history)
    history = [json.loads(line) for line in (cache / "history.jsonl").read_text().splitlines()]
    assert [h["key"]["baseline"] for h in history] == ["fp32", "copied"]
    assert history[0]["cells"] == {"b2x64": _row(results, "fp32")["latency"][0]["median_ms"]}
    assert results["run"]["machine_state"]["earlier_runs"] == 0 == again["run"]["machine_state"]["earlier_runs"]
    # the fitted tfidf-logreg is reused too: same directory, same answers
    tfidf, first_tfidf = _row(again, "tfidf-logreg"), _row(results, "tfidf-logreg")
    assert tfidf["chain"][0]["cached"] is True and tfidf["model_dir"] == first_tfidf["model_dir"]
    assert tfidf["quality"] == first_tfidf["quality"] and tfidf["size"]["fit_s"] == first_tfidf["size"]["fit_s"]
    assert "MALLOC_MMAP_MAX_" not in again["variants"][0]["memory"]["malloc_env"]
    assert copied["memory"]["malloc_env"]["MALLOC_MMAP_MAX_"] == "0"  # the first run kept freed memory (default)
    assert "copied" in out and "results.json" in out  # the table and where the files are


def test_ctrl_c_leaves_finished_rows_written(tmp_path, tiny_bert_dir, bbc_csv, monkeypatch):
    from lean.bench import runner

    real = runner.measure_variant
    calls = []

    def interrupt_second(suite, variant, *args):
        calls.append(variant.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(suite, variant, *args)

    data = _tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    data["baseline"] = "needs-gpu"  # skipped without a subprocess: the finished row is cheap
    suite = parse_suite({**data, "variants": {k: data["variants"][k] for k in ("needs-gpu", "fp32", "slow")}})
    monkeypatch.setattr(runner, "measure_variant", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache", quiet=True))
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in written["variants"]] == ["needs-gpu"]
    assert written["run"]["interrupted"] is True and written["run"]["not_run"] == ["fp32", "slow"]
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "pareto.png").is_file()


def test_next_variants_subprocess_starts_early_and_is_dismissed_when_its_build_fails(tmp_path, tiny_bert_dir, bbc_csv,
                                                                                     fake_steps, monkeypatch):
    from lean.bench import runner

    real, started = runner.start_early, {}

    def recording(variant, threads, logs):
        started[variant.name] = child = real(variant, threads, logs)
        return child

    monkeypatch.setattr(runner, "start_early", recording)
    data = _tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    variants = {k: data["variants"][k] for k in ("fp32", "tfidf-logreg", "boom")}
    suite = parse_suite({**data, "variants": {"fp32": variants.pop("fp32"), "sdpa": {"load": {"attention": "sdpa"}},
                                              **variants}})
    results = runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache",
                                                          quiet=True))
    rows = {r["name"]: r for r in results["variants"]}
    # each subprocess after the first started while the previous variant was scored, and measured its row
    assert set(started) == {"sdpa", "tfidf-logreg", "boom"} and rows["sdpa"]["status"] == "ok"
    # waiting imported what a fresh start imports before it takes the bare RSS, nothing more
    assert rows["sdpa"]["memory"]["bare_rss_mb"] == pytest.approx(rows["fp32"]["memory"]["bare_rss_mb"], rel=0.1)
    assert rows["tfidf-logreg"]["status"] == "ok" and rows["tfidf-logreg"]["quality"]["accuracy"] > 0
    assert rows["tfidf-logreg"]["latency"][0]["count"] >= 1 and rows["fp32"]["status"] == "ok"
    assert rows["tfidf-logreg"]["timing"]["started_early"] is True and rows["fp32"]["timing"]["started_early"] is False
    # boom's build failed: its waiting subprocess was told nothing and ended without a result
    assert rows["boom"]["status"] == "failed" and rows["boom"]["phase"] == "build"
    assert started["boom"].proc.returncode == 0 and not (tmp_path / "out" / "logs" / "boom.result.json").exists()
    assert all(child.proc.poll() is not None for child in started.values())


def test_measure_subprocess_started_early_waits_for_go(tmp_path, bbc_csv):
    import subprocess

    spec, result, task = tmp_path / "spec.json", tmp_path / "result.json", tmp_path / "task.json"
    task.write_text(json.dumps({"spec": str(bbc_csv), "text_column": None, "label_column": None, "split_seed": 42}))
    command = [sys.executable, "-m", "lean.bench.measure", str(spec), str(result), "--wait"]
    ended = subprocess.run(command + ["tfidf-logreg", str(task)], input="", capture_output=True, text=True,
                           timeout=120)
    assert ended.returncode == 0 and not result.exists()  # stdin closed before "go": nothing measured
    wrong = subprocess.run(command + ["tensorflow", str(task)], input="", capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "--wait takes one of torch, onnx, tfidf-logreg" in wrong.stderr


def test_ctrl_c_before_the_interleaved_latency_keeps_loaded_rows_as_interrupted(tmp_path, tiny_bert_dir, bbc_csv,
                                                                               monkeypatch):
    from lean.bench import runner

    real, calls, processes = runner.measure_variant, [], []

    def interrupt_third(suite, variant, *args):
        calls.append(variant.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        row = real(suite, variant, *args)
        pending, early = args[7], args[8]
        processes.extend(p.process.proc for p in pending)
        processes.extend(child.proc for child in early.values())  # the next variant's, started early
        return row

    data = _tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    suite = parse_suite({**data, "variants": {k: data["variants"][k] for k in ("fp32", "tfidf-logreg", "slow")}})
    monkeypatch.setattr(runner, "measure_variant", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache", quiet=True))
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    fp32, tfidf = written["variants"]
    assert fp32["status"] == tfidf["status"] == "interrupted" and "latency" in fp32["error"]
    assert fp32["quality"]["accuracy"] > 0 and "pending" not in fp32  # what it measured before stays
    assert processes and all(proc.poll() is not None for proc in processes)  # no loaded subprocess left behind


# ---- CLI ----------------------------------------------------------------------------------------------

def _cli(monkeypatch, capsys, *args):
    """Run `lean ARGS` through lean.cli.main in this process: (exit code, stdout, stderr)."""
    from lean import cli

    monkeypatch.setattr(sys, "argv", ["lean", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_bad_suite_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        task: bbc-news
        base: minilm-l6
        variants: {fp32: {laod: {attention: eager}}}
    """))
    code, _, err = _cli(monkeypatch, capsys, "bench", str(bad), "-o", str(tmp_path / "o"))
    assert code == 2 and "unknown key 'laod'" in err and len(err.strip().splitlines()) == 1
    code, _, err = _cli(monkeypatch, capsys, "bench", str(bad), "x.yaml")
    assert code == 2 and "not both" in err
    code, out, _ = _cli(monkeypatch, capsys, "bench", "--list")
    assert code == 0 and "fp16" in out and "student-l3+onnx-int8" in out


def test_rigorous_times_every_cell_three_times_as_long(tmp_path, tiny_bert_dir, bbc_csv, monkeypatch, capsys, tiny_run):
    from lean.bench import runner

    default = load_suite()
    longer = default.longer(runner.RIGOROUS_FACTOR)
    for before, after in [(default.measure, longer.measure)] + [
            (default.variants[n].measure, longer.variants[n].measure) for n in default.variants]:
        assert (after.repeats, after.min_repeats, after.max_cell_s) == \
            (3 * before.repeats, 3 * before.min_repeats, 3 * before.max_cell_s)
        assert (after.warmup, after.batch_sizes, after.timeout_s) == (before.warmup, before.batch_sizes, before.timeout_s)
    assert default.measure.repeats == 60 and longer.variants["sdpa"].steps == default.variants["sdpa"].steps

    data = _tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    suite = parse_suite({**data, "variants": {k: data["variants"][k] for k in ("fp32", "tfidf-logreg")}})
    results = runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache",
                                                          quiet=True, rigorous=True))
    assert results["run"]["rigorous"] is True and results["suite"]["measure"]["repeats"] == 6  # 2 in the suite
    assert "`--rigorous`" in (tmp_path / "out" / "report.md").read_text()
    plain, plain_dir = tiny_run[0], tiny_run[1]  # the same suite without the flag: 2 calls a cell
    assert plain["run"]["rigorous"] is False and "rigorous" not in (plain_dir / "report.md").read_text()
    assert all(c["count"] < 6 for r in plain["variants"] if r["status"] == "ok" and r.get("latency")
               for c in r["latency"] if "count" in c)
    for row in results["variants"]:
        cell = row["latency"][0]
        assert row["status"] == "ok" and (cell.get("all_rounds") or cell)["count"] >= 6, row["name"]

    seen = []

    def stop(suite, options, console=None):
        seen.append(options.rigorous)
        raise LeanError("stopped before measuring")

    monkeypatch.setattr(runner, "run_bench", stop)
    for args in (["--rigorous"], []):
        code, _, err = _cli(monkeypatch, capsys, "bench", *args, "-o", str(tmp_path / "cli"))
        assert code == 2 and "stopped before measuring" in err
    assert seen == [True, False]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="PYTHONSAFEPATH needs Python 3.11")
def test_children_started_from_a_checkout_do_not_import_its_kernels_folder():
    # transformers and bitsandbytes probe for the Hub's `kernels` package; a child started with `python -m`
    # from the repository root must not find the checkout's kernels/ (installed as lean.kernels) instead
    import subprocess

    from lean.bench.runner import child_env

    root = Path(__file__).resolve().parent.parent
    assert (root / "kernels" / "__init__.py").is_file()
    probe = "import importlib.util; s = importlib.util.find_spec('kernels'); print(s.origin if s else None)"
    env = {k: v for k, v in child_env(None).items() if k != "PYTHONPATH"}  # other tests may have set it
    found = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert found != str(root / "kernels" / "__init__.py")
    plain = {k: v for k, v in env.items() if k != "PYTHONSAFEPATH"}
    bare = subprocess.run([sys.executable, "-c", probe], cwd=root, env=plain, capture_output=True, text=True, check=True)
    assert bare.stdout.strip() == str(root / "kernels" / "__init__.py")  # what the variable prevents


def _run_results(acc: float, speedup: float) -> dict:
    cell = lambda b, s, ms, x: {"batch_size": b, "seq_length": s, "median_ms": ms, "speedup": x}  # noqa: E731
    return {"baseline": "sdpa", "variants": [
        {"name": "sdpa", "status": "ok", "quality": {"accuracy": 0.98, "macro_f1": 0.97},
         "latency": [cell(1, 128, 50.0, 1.0)]},
        {"name": "int8", "status": "ok", "quality": {"accuracy": acc, "macro_f1": 0.96},
         "latency": [cell(1, 128, 50.0 / speedup, speedup)]},
        {"name": "fp16", "status": "skipped"}]}


def test_speedup_interval_spans_how_far_the_ratio_moved_over_the_rounds():
    from lean.bench.report import finalize, interval_spread, speedup_interval, to_markdown

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
    from lean.bench.history import HISTORY, KEEP, machine_state, note_machine_state, read_history, spell_text
    from lean.bench.report import to_markdown

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
    assert moved["run"]["machine_state"]["spell"] == [] and moved["run"]["machine_state"]["speedups_off"] == ["int8 b1x128"]
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


def test_training_progress_eta_ignores_the_setup_before_the_first_step():
    from lean.bench.runner import training_progress

    # step 1 reported 100 s in (teacher logits cached first), then 10 steps in 5 s: 0.5 s a step
    assert training_progress("build distill (1/1)", 1, 196, (1, 100.0), 100.0) == "build distill (1/1): 1/196 training steps"
    assert training_progress("build distill (1/1)", 11, 196, (1, 100.0), 105.0) == \
        "build distill (1/1): 11/196 training steps, eta 1:32"


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
    from lean.bench.runner import Pending, interleaved_latency
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
    from lean.bench.runner import ROUNDS, Pending
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


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux /proc")
def test_peak_rss_is_the_measuring_process_own_not_its_parents():
    # ru_maxrss of a forked-then-exec'd child starts at the parent's RSS; the row must not inherit it
    ballast = bytearray(400 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    code = "from lean.bench.measure import rss_now_mb, rss_peak_mb; print(rss_now_mb(), rss_peak_mb())"
    now, peak = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                          check=True).stdout.split())
    del ballast
    assert 0 < now <= peak < 300


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads per-thread CPU time from Linux /proc")
def test_wait_until_idle_waits_for_a_spinning_process_to_stop():
    # the next variant's clock starts only once the previous one's threads stopped spinning
    import subprocess

    from lean.bench.runner import process_cpu_ns, wait_until_idle

    spin = "import time\nend = time.perf_counter() + 0.4\nwhile time.perf_counter() < end: pass\ntime.sleep(30)"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.1)  # started and spinning
        assert process_cpu_ns(proc.pid) > 0
        waited = wait_until_idle(proc.pid, max_s=5.0)
        assert 0.15 < waited < 3.0  # the spinning lasted ~0.4 s from the start
        # on a busy VM the spinner can go unscheduled for a window and look idle early: let its 0.4 s
        # (counted once its interpreter is up) surely end before asking again
        time.sleep(max(0.0, started + 1.5 - time.perf_counter()))
        assert wait_until_idle(proc.pid) < 0.05  # idle now: one window
    finally:
        proc.kill()
        proc.wait()


def test_serve_latency_times_each_visit_through_the_distinct_batches(capsys):
    # a TF-IDF call's cost depends on the text, and one batch timed over and over finds its
    # vocabulary entries in the cache: the timed calls go on through the batches from visit to visit
    from lean.bench.measure import serve_latency

    calls = []

    class Backend:
        def forward(self, batch):
            calls.append(batch)

        def sync(self):
            pass

    entry = {"cell": {"batch_size": 1, "seq_length": 8}, "times": [], "warmed": None, "batches": list("abcde")}
    serve_latency(Backend(), [entry], {"warmup": 0, "max_cell_s": None}, ["time 1 8 3 2", "time 1 8 3", "time 1 9 1", "end"])
    assert calls == ["a", "b"] + ["a", "b", "c"] + ["d", "e", "a"]  # 2 untimed, 3 timed; then 3 timed
    assert len(entry["times"]) == 6
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "@ready" and out[1].startswith("@times 1 8 ") and len(out[1].split()[3].split(",")) == 3
    assert out[3] == "@times 1 9 -"  # a cell this variant does not measure


def test_rewarm_calls_fill_a_short_time_before_a_fast_cells_timed_calls():
    from lean.bench.runner import REWARM_S, rewarm_calls

    assert rewarm_calls([]) == 0  # the first visit is the warm-up itself
    assert rewarm_calls([0.5, 0.4]) == 0  # a call of 0.1 s or more is warm after the previous one
    assert rewarm_calls([0.05]) == 1 and rewarm_calls([0.004]) == -(-REWARM_S // 0.004)
    assert rewarm_calls([1e-5]) == 100  # at most 100


def _visits(per_round):
    return [{"round": r, "ms": list(ms)} for r, ms in enumerate(per_round)]


def test_quiet_rounds_set_aside_rounds_where_the_variants_ran_slower_together():
    from lean.bench.measure import quantile
    from lean.bench.rounds import quiet_rounds, round_slowness, settle_cell

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


def test_interleaved_latency_sets_aside_a_slow_spell_and_makes_up_its_calls(tmp_path, monkeypatch):
    # a slow spell over most rounds slows 'base' by 20% and 'onnx' by 60%: the figures and the speedup
    # are those of the quiet rounds, and more rounds make up the calls set aside (to half the target)
    from lean.bench import runner
    from lean.bench.report import finalize
    from lean.bench.runner import Pending, interleaved_latency
    from lean.bench.suite import MeasureConfig

    monkeypatch.setattr(runner, "EXTRA_SHARE", 100.0)  # the fake calls take no time: no time limit here

    class Quiet:
        def phase(self, text):
            pass

    asked: list = []
    measure = MeasureConfig(batch_sizes=[1], seq_lengths=[16], repeats=9, min_repeats=9, max_cell_s=None)
    # each round is two visits, one per variant: the spell covers rounds 2 to ROUNDS - 2 (0-based)
    spell = range(5, 2 * (runner.ROUNDS - 2) + 3)
    pending = []
    for name, fast, slow in (("base", 0.2, 0.24), ("onnx", 0.1, 0.16)):
        result = tmp_path / f"{name}.json"
        # what the subprocess writes at the end: figures over every call (the harness replaces them)
        every_call = {"batch_size": 1, "seq_length": 16, "median_ms": 1000 * slow, "count": runner.ROUNDS + 2}
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
        planned = runner.ROUNDS + 1
        assert cell["median_ms"] == pytest.approx(fast_ms) and cell["count"] == 5
        assert cell["rounds"] == {"quiet": 5, "of": planned + 1} and cell["all_rounds"]["count"] == planned + 1
        assert all(v["quiet"] == (max(v["ms"]) <= fast_ms) for v in cell["visits"])
    results = {"baseline": "base", "variants": [p.row for p in pending]}
    finalize(results)
    onnx_cell, = results["variants"][1]["latency"]
    assert onnx_cell["speedup"] == pytest.approx(2.0) and onnx_cell["speedup_interval"] == [2.0, 2.0]


def test_child_env_keeps_freed_memory_only_when_asked():
    from lean.bench.runner import REUSE_MEMORY_ENV, child_env

    env = child_env(2, reuse_memory=True)
    assert env["OMP_NUM_THREADS"] == "2" and env["PYTHONSAFEPATH"] == "1"
    assert {k: env[k] for k in REUSE_MEMORY_ENV} == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40),
                                                      "MALLOC_ARENA_MAX": "1"}
    assert not set(REUSE_MEMORY_ENV) & set(child_env(2)) - set(os.environ)


def test_estimators_script_counts_agreeing_speedups_under_both_medians(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("estimators", Path(__file__).parent.parent / "benchmarks" / "estimators.py")
    estimators = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(estimators)

    def run(name, base_ms, mine_ms):
        cells = lambda calls: [{"batch_size": 1, "seq_length": 8, "visits": [{"round": 0, "ms": calls, "quiet": True}]}]
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
