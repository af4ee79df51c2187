"""Tests for lean.bench.suite: the YAML schema, every key and number checked up front, one line each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench_support import fake_steps, tiny_suite

from lean.bench.suite import DEFAULT_SUITE, load_suite, parse_suite
from lean.errors import LeanError

FIXTURES = (fake_steps,)  # pytest finds fixtures by their name in the test module


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
    data = tiny_suite(Path("base"), Path("task.csv"), tmp_path / "c")
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
    data = tiny_suite(Path("base"), Path("task.csv"), tmp_path / "c")
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
    # one file, reachable from an installed package too
    assert (suites / "default.yaml").resolve() == DEFAULT_SUITE.resolve()
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
        assert {"cuda"} <= set(suite.variants["fp16"].requires)
        assert {"cuda"} <= set(suite.variants["lean-attention"].requires)
        # the student shared by student-l3 and student-l3+onnx-int8 is one chain prefix, so one build
        assert suite.variants["student-l3"].steps[0] == suite.variants["student-l3+onnx-int8"].steps[0]


def test_gpu_suite_parses():
    suite = load_suite(Path(__file__).resolve().parent.parent / "benchmarks" / "suites" / "gpu.yaml")
    assert {"fp16", "bf16", "lean-attention", "onnx-fp16"} <= set(suite.variants)


def test_step_options_fill_the_suite_task_only_where_the_step_takes_one(tmp_path, fake_steps):
    from lean.bench.suite import Step, step_options

    suite = parse_suite(tiny_suite(Path("b"), Path("t.csv"), tmp_path / "c"), check_steps=False)
    finetune = step_options(suite, Step("finetune", {"epochs": 1}))
    assert finetune["task"] == "t.csv" and finetune["split_seed"] == 42 and finetune["epochs"] == 1
    assert step_options(suite, Step("finetune", {"task": "bbc-news"}))["task"] == "bbc-news"  # the user's choice wins
    assert "task" not in step_options(suite, Step("copy", {}))  # CopyConfig has no task field


# ---- remote code, numbers, paths (issue: safe outputs and one-line errors) ----------------------------

def _clean_suite(tmp_path) -> dict:
    data = tiny_suite(Path("base"), Path("task.csv"), tmp_path / "c")
    data["variants"] = {k: v for k, v in data["variants"].items() if k not in ("copied", "boom")}
    return data


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(trust_remote_code=True),
    lambda d: d.update(teacher=[{"finetune": {"epochs": 1, "trust_remote_code": True}}]),
    lambda d: d["variants"].update(x={"steps": [{"quantize": {"method": "dynamic-int8", "trust_remote_code": True}}]}),
    lambda d: d["variants"].update(x={"steps": [{"export": {"trust_remote_code": False}}]}),  # not even false
])
def test_a_suite_cannot_enable_remote_code(mutate, tmp_path):
    data = _clean_suite(tmp_path)
    mutate(data)
    with pytest.raises(LeanError, match="--trust-remote-code") as info:
        parse_suite(data, "s.yaml")
    assert "trust_remote_code" in str(info.value) and "\n" not in str(info.value)


def test_the_command_line_flag_reaches_the_steps_that_take_it(tmp_path, fake_steps):
    import dataclasses

    from lean.bench.suite import Step, step_options

    suite = parse_suite(_clean_suite(tmp_path), check_steps=False)
    assert "trust_remote_code" not in step_options(suite, Step("finetune", {}))  # off: the step's own default
    trusted = dataclasses.replace(suite, trust_remote_code=True)
    assert step_options(trusted, Step("finetune", {}))["trust_remote_code"] is True
    assert "trust_remote_code" not in step_options(trusted, Step("copy", {}))  # CopyConfig takes no such option
    assert trusted.to_dict()["trust_remote_code"] is True and "trust_remote_code" not in suite.to_dict()


@pytest.mark.parametrize("key, value", [
    ("eval_batch_size", 0), ("max_cell_s", -5), ("max_cell_s", float("nan")), ("max_cell_s", float("inf")),
    ("timeout_s", float("nan")), ("timeout_s", -1), ("build_timeout_s", 0), ("threads", -2), ("threads", 1.5),
    ("repeats", "abc"), ("warmup", -1), ("max_eval_samples", 0), ("max_eval_samples", -3), ("max_length", "x"),
    ("batch_sizes", [True]), ("interleave", "yes"), ("quality", 1), ("split", "train"), ("min_repeats", None),
])
def test_every_measure_number_is_checked_up_front_naming_its_key(key, value, tmp_path):
    for where in ("suite", "variant"):
        data = _clean_suite(tmp_path)
        target = data["measure"] if where == "suite" else data["variants"]["fp32"].setdefault("measure", {})
        target[key] = value
        with pytest.raises(LeanError) as info:
            parse_suite(data, "s.yaml")
        message = str(info.value)
        assert f"measure.{key}" in message and "\n" not in message, message


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.update(split_seed="abc"), "split_seed"),
    (lambda d: d.update(split_seed=-1), "split_seed"),
    (lambda d: d["variants"]["fp32"].update(requires=["two words"]), "not a module name"),
    (lambda d: d["variants"]["fp32"].update(requires=[3]), "requires must be a list of names"),
])
def test_bad_suite_values_are_one_line(mutate, words, tmp_path):
    data = _clean_suite(tmp_path)
    mutate(data)
    with pytest.raises(LeanError, match=words) as info:
        parse_suite(data, "s.yaml")
    assert "\n" not in str(info.value)


def test_a_dotted_requirement_whose_package_is_missing_is_a_skip_not_a_crash(tmp_path):
    from lean.bench.plan import missing_requirement

    data = _clean_suite(tmp_path)
    data["variants"]["fp32"]["requires"] = ["no_such_pkg_xyz.sub", "json.decoder"]
    suite = parse_suite(data, "s.yaml")
    assert missing_requirement(suite.variants["fp32"], "cpu") == "needs the package no_such_pkg_xyz.sub (not installed)"
    data["variants"]["fp32"]["requires"] = ["json.decoder"]
    assert missing_requirement(parse_suite(data, "s.yaml").variants["fp32"], "cpu") is None


def test_suite_paths_resolve_against_the_suite_file_not_the_working_directory(tmp_path, monkeypatch, bbc_csv):
    import shutil

    import yaml

    folder = tmp_path / "suites"
    (folder / "models" / "mine").mkdir(parents=True)
    shutil.copy(bbc_csv, folder / "task.csv")
    data = {"task": "task.csv", "base": "models/mine", "teacher": [], "variants": {
        "mine": {"path": "models/mine"}, "builtin": {"kind": "tfidf-logreg"}}, "measure": {"split": "validation"}}
    (folder / "s.yaml").write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    suite = load_suite(folder / "s.yaml")
    assert suite.task == str((folder / "task.csv").resolve()) and suite.base == str((folder / "models/mine").resolve())
    assert suite.variants["mine"].start == str((folder / "models/mine").resolve())
    assert suite.measure.split == "validation" and suite.to_dict()["measure"]["split"] == "validation"
    # a name that is no path beside the suite stays as written (a built-in task or model, a Hub id)
    assert load_suite().task == "bbc-news" and load_suite().base == "minilm-l6"
