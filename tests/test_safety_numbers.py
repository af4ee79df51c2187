"""Every verb against generated bad numbers: a clean refusal before any work, or a value that is legitimate.

For each numeric option of finetune, distill, quantize, export, predict and bench, each of 0, -1,
nan, inf, -inf and a huge value goes through the real command line. The function that would start
the work is replaced by one that records the call, so a refusal that comes only after the work
(or never) shows up as "work started". A value may start the work only where it is listed as
legitimate below (a seed of 0, a sample limit larger than the split, a gate turned off with 0).
A last test trains for real at the top of the accepted range and asserts the
result is never a NaN model.

    python -m pytest tests/test_safety_numbers.py -x -q
"""

from __future__ import annotations

import importlib
import math

import pytest

from conftest import invoke

HUGE_INT, HUGE_FLOAT = str(10**12), "1e308"
INT_VALUES = ["0", "-1", "nan", "inf", HUGE_INT]
FLOAT_VALUES = ["0", "-1", "nan", "inf", "-inf", HUGE_FLOAT]

# verb -> (the function that starts the work, the arguments that make the command otherwise valid)
VERBS = {
    "finetune": ("lean.finetune.finetune", ["{model}", "--task", "{task}", "-o", "{out}"]),
    "distill": ("lean.distill.distill", ["--teacher", "{model}", "--student-layers", "1", "-o", "{out}"]),
    "quantize": ("lean.quantize.quantize_dir", ["{model}", "-m", "dynamic-int8", "-o", "{out}"]),
    "export": ("lean.export.export", ["{model}", "-o", "{out}"]),
    "predict": ("lean.runtime.load", ["{model}", "a text"]),
    "bench": ("lean.bench.runner.run_bench", ["{model}", "-o", "{out}"]),
}

# verb -> option -> "int" or "float"
OPTIONS = {
    "finetune": {"epochs": "float", "lr": "float", "batch-size": "int", "max-length": "int", "seed": "int",
                 "split-seed": "int", "lora-r": "int", "early-stopping-patience": "int", "max-train-samples": "int",
                 "max-eval-samples": "int", "vocab-size": "int"},
    "distill": {"student-layers": "int", "epochs": "float", "lr": "float", "batch-size": "int", "grad-accum": "int",
                "max-length": "int", "seed": "int", "split-seed": "int", "temperature": "float", "alpha": "float",
                "hidden-weight": "float", "attention-weight": "float", "early-stopping-patience": "int",
                "save-steps": "int", "max-train-samples": "int", "max-eval-samples": "int"},
    "quantize": {"threshold": "float", "blocksize": "int", "calibration-samples": "int", "max-length": "int",
                 "max-eval-samples": "int"},
    "export": {"opset": "int", "calibration-samples": "int", "atol": "float", "max-metric-drop": "float",
               "min-agreement": "float", "max-perplexity-ratio": "float", "max-length": "int", "max-eval-samples": "int"},
    "predict": {"batch-size": "int", "max-length": "int", "threads": "int", "max-new-tokens": "int"},
    "bench": {"timeout": "float", "threads": "int"},
}

# Values that are legitimate, so the work may start: (verb, option) -> values.
LEGITIMATE = {
    ("finetune", "seed"): {"0"}, ("finetune", "split-seed"): {"0"},
    ("finetune", "max-train-samples"): {HUGE_INT}, ("finetune", "max-eval-samples"): {HUGE_INT},  # the whole split
    ("finetune", "early-stopping-patience"): {HUGE_INT},  # never stop early
    ("distill", "seed"): {"0"}, ("distill", "split-seed"): {"0"},
    ("distill", "max-train-samples"): {HUGE_INT}, ("distill", "max-eval-samples"): {HUGE_INT},
    ("distill", "early-stopping-patience"): {HUGE_INT}, ("distill", "save-steps"): {HUGE_INT},
    # a student deeper than the teacher is refused once the teacher's depth is read (test_distill covers it)
    ("distill", "student-layers"): {HUGE_INT},
    ("distill", "alpha"): {"0"}, ("distill", "hidden-weight"): {"0"}, ("distill", "attention-weight"): {"0"},
    ("quantize", "threshold"): {"0"},  # documented: 0 turns the fp16 outlier path off
    ("quantize", "calibration-samples"): {HUGE_INT}, ("quantize", "max-eval-samples"): {HUGE_INT},
    ("export", "calibration-samples"): {HUGE_INT}, ("export", "max-eval-samples"): {HUGE_INT},
    ("export", "atol"): {"0"}, ("export", "max-metric-drop"): {"0"}, ("export", "min-agreement"): {"0"},
    ("bench", "timeout"): {HUGE_FLOAT},
}
# the option the quantize command needs to accept a method-specific value
METHOD_FOR = {"threshold": "bnb-int8", "blocksize": "bnb-nf4"}

def _cases():
    for verb, options in OPTIONS.items():
        for option, kind in options.items():
            for value in INT_VALUES if kind == "int" else FLOAT_VALUES:
                yield pytest.param(verb, option, value, id=f"{verb}-{option}={value}")


class _WorkStarted(SystemExit):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert_dir, bbc_csv):
    return {"model": str(tiny_bert_dir), "task": str(bbc_csv), "root": tmp_path_factory.mktemp("numbers")}


@pytest.mark.parametrize("verb, option, value", list(_cases()))
def test_bad_number_is_refused_or_legitimate(setup, monkeypatch, verb, option, value):
    target, base = VERBS[verb]
    calls = []

    def started(*args, **kwargs):
        calls.append((args, kwargs))
        raise _WorkStarted(99)

    module, _, attr = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module), attr, started)  # (lean.finetune is also a function name)
    monkeypatch.chdir(setup["root"])
    out = setup["root"] / f"out-{verb}-{option}"
    args = [a.format(model=setup["model"], task=setup["task"], out=out) for a in base]
    if verb == "quantize" and option in METHOD_FOR:
        args[args.index("dynamic-int8")] = METHOD_FOR[option]
    res = invoke(verb, *args, f"--{option}", value)
    assert "Traceback" not in res.stderr + res.stdout
    if calls:  # the work started: only with a legitimate value, passed on unchanged
        assert value in LEGITIMATE.get((verb, option), set()), f"--{option} {value} was accepted"
        assert res.returncode == 99
    else:
        assert res.returncode == 2, (res.returncode, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
        assert not out.exists()


def test_training_at_the_top_of_the_range_is_never_a_nan_model(tmp_path, tiny_bert_dir, bbc_csv):
    """--lr 1, the largest accepted: the result has finite weights, or the run says it diverged and writes nothing."""
    out = tmp_path / "teacher"
    res = invoke("finetune", str(tiny_bert_dir), "--task", str(bbc_csv), "--lr", "1", "--epochs", "1",
                 "--batch-size", "16", "--max-length", "16", "--max-train-samples", "32", "--max-eval-samples", "8",
                 "--device", "cpu", "-o", str(out))
    assert "Traceback" not in res.stderr
    if res.returncode == 0:
        import json

        from safetensors.torch import load_file

        assert all(t.isfinite().all() for t in load_file(out / "model.safetensors").values())
        text = (out / "lean.json").read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"lean.json holds {c}"))  # strict JSON
        assert math.isfinite(json.loads(text)["metrics"]["test"]["accuracy"])
    else:
        assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: training diverged")
        assert not out.exists()
