"""Every model family of tests/families.py through every step: finetune, distill, each quantization method,
export (fp32 and int8), predict and lean bench, asserting the outcome the table states for this stack.

    python -m pytest tests/test_families.py -q            # ~3 min on 2 cores

The families' tests share one xdist group, so the teachers they fine-tune are built once per session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import bbc_rows, invoke
from families import (DECODERS, ENCODERS, FAMILIES, LABELS, NEEDS_OPTIMUM, QUANTIZE_METHODS, render,
                      render_readme_table, save_family_model)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("families")]
SMALL = dict(max_eval_samples=4)  # every step scores a 4-text slice: these are tiny random models


def stack() -> str:
    from lean.export.exporters import EXPORTERS

    return "4.57" if EXPORTERS["optimum"].available() else "5.x"


@pytest.fixture(scope="session")
def family_task(tmp_path_factory) -> Path:
    """40 BBC articles (8 a class) as a CSV task: the classifiers' training data."""
    import csv

    path = tmp_path_factory.mktemp("families") / "task.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(bbc_rows(8))
    return path


@pytest.fixture(scope="session")
def teachers(tmp_path_factory, family_task):
    """teacher(name): the family's tiny model fine-tuned for 2 steps (built once, then reused)."""
    from lean import FinetuneConfig, finetune

    root, built = tmp_path_factory.mktemp("family-models"), {}
    texts = [r["text"] for r in bbc_rows(8)]

    def teacher(name: str) -> Path:
        if name not in built:
            lm = FAMILIES[name].kind == "lm"
            base = save_family_model(name, root / name / "base", texts)
            # a classifier trains on 8 articles (2 steps), a causal LM on 64-token blocks of 2 articles
            config = FinetuneConfig(task="bbc-news-lm" if lm else str(family_task), epochs=1, batch_size=4,
                                    max_length=64, max_train_samples=2 if lm else 8, **SMALL)
            built[name] = finetune(str(base), config, str(root / name / "teacher"))
        return built[name]

    return teacher


def _manifest(path: Path) -> dict:
    return json.loads((Path(path) / "lean.json").read_text())


def _one_line_refusal(result, *needles: str) -> None:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-1500:]
    line, = result.stderr.strip().splitlines()
    assert all(n in line for n in needles), line


def _check_teacher(name: str, path: Path) -> None:
    m = _manifest(path)
    assert m["step"] == "finetune" and m["train"]["steps"] >= 2
    if FAMILIES[name].kind == "lm":
        for split in ("validation", "test"):  # a random model over a 400-token vocabulary
            assert 10 < m["metrics"][split]["perplexity"] < 5000, m["metrics"]
    else:
        assert m["metrics"]["test"]["n"] == 4 and 0 <= m["metrics"]["test"]["accuracy"] <= 1
        config = json.loads((path / "config.json").read_text())
        assert [config["id2label"][str(i)] for i in range(5)] == LABELS


def _distill(name: str, teacher: Path, out: Path) -> None:
    from lean import DistillConfig, distill

    samples = 2 if FAMILIES[name].kind == "lm" else 8
    student = distill(str(teacher), DistillConfig(student_layers=1, epochs=1, batch_size=4, max_length=64,
                                                  max_train_samples=samples, **SMALL), str(out))
    m = _manifest(student)
    assert m["student"]["layers"] == 1 and m["student"]["origin"] == {"kind": "teacher-layers"}
    assert Path(m["parent"]["path"]) == teacher and m["metrics"]["test"]["n"] == 4
    config = json.loads((student / "config.json").read_text())
    assert config.get("num_hidden_layers", config.get("n_layers", config.get("n_layer"))) == 1, config


def _quantize(name: str, teacher: Path, out: Path, method: str) -> None:
    import lean.quantize as q

    quantized = q.quantize_dir(str(teacher), q.config_from_dict(method=method, calibration_samples=4, **SMALL),
                               str(out))
    m = _manifest(quantized)
    assert m["step"] == "quantize" and m["quantization"]["method"] == method
    # every linear layer of both blocks (the head kept in full precision), stored smaller
    assert len(m["quantization"]["quantized"]) >= 8 and m["size"]["linear_ratio"] < 0.75, m["size"]
    assert m["metrics"]["test"], m["metrics"]  # scored on the task's test slice after quantizing
    model = q.load_quantized(str(quantized))
    # reloaded with its quantized layers (bitsandbytes' Linear8bitLt / Linear4bit, torch.ao's dynamic Linear)
    packed = [n for n, mod in model.named_modules() if "bitsandbytes" in type(mod).__module__
              or "quantized" in type(mod).__module__]
    assert set(m["quantization"]["quantized"]) <= set(packed), packed


def _export(name: str, teacher: Path, out: Path, quantize: str | None):
    from lean import ExportConfig, export

    if FAMILIES[name].outcome(stack(), "export") == NEEDS_OPTIMUM:
        args = ["export", str(teacher), "-o", str(out)] + (["--quantize", quantize] if quantize else [])
        _one_line_refusal(invoke(*args), "optimum")
        assert not out.exists()
        return None
    onnx = export(str(teacher), ExportConfig(quantize=quantize, **SMALL), str(out))
    m = _manifest(onnx)
    # export raises unless its gates pass: ONNX against PyTorch on the task's texts
    assert (onnx / "model.onnx").is_file() and m["validation"]["n"] > 0 and m["validation"]["agreement"] >= 0.9
    assert m["exporter"]["name"] == ("optimum" if stack() == "4.57" else "torch")
    return onnx


def _predict(name: str, onnx: Path | None, teacher: Path) -> None:
    if onnx is None:  # lean predict runs ONNX directories only
        _one_line_refusal(invoke("predict", str(teacher), "Shares rose"), "model.onnx", "lean export")
        return
    result = invoke("predict", str(onnx), "Shares rose after profits beat forecasts", "A late goal won the cup")
    assert result.returncode == 0, result.stderr[-1500:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    if FAMILIES[name].kind == "classification":
        rows = [json.loads(line) for line in lines]
        assert all(r["label"] in LABELS and sorted(r["scores"]) == sorted(LABELS) for r in rows)
    else:
        assert all(isinstance(json.loads(line), (dict, str)) for line in lines)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_through_every_step(name, teachers, tmp_path):
    teacher = teachers(name)
    _check_teacher(name, teacher)
    _distill(name, teacher, tmp_path / "student")
    for method in QUANTIZE_METHODS:
        _quantize(name, teacher, tmp_path / f"q-{method}", method)
    onnx = _export(name, teacher, tmp_path / "onnx", None)
    onnx_int8 = _export(name, teacher, tmp_path / "onnx-int8", "int8-dynamic")
    assert (onnx is None) == (onnx_int8 is None)
    _predict(name, onnx_int8, teacher)


@pytest.mark.parametrize("kind, names", [("classifiers", ENCODERS), ("causal LMs", DECODERS)])
def test_lean_bench_measures_every_family(kind, names, teachers, tmp_path):
    """`lean bench DIR ...` over every family's teacher at once: a row each, scored and timed."""
    from lean.bench.runner import BenchOptions, run_bench
    from lean.bench.suite import MeasureConfig, directories_suite

    dirs = [str(teachers(n)) for n in names]
    measure = MeasureConfig(batch_sizes=[1], seq_lengths=[16], warmup=1, repeats=2, threads=1, **SMALL,
                            perplexity={"window": 32, "stride": 16, "max_tokens": 200, "batch_size": 4},
                            generation=False)
    suite = directories_suite(dirs, measure=measure)
    results = run_bench(suite, BenchOptions(output=tmp_path / "run", runs_dir=tmp_path / "cache", quiet=True))
    rows = {Path(r["model_dir"]).parent.name: r for r in results["variants"]}
    assert sorted(rows) == sorted(names)
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("error"))
        assert row["latency"][0]["median_ms"] > 0
        if kind == "classifiers":
            assert row["quality"]["n"] == 4 and sorted(row["quality"]["per_class"]) == sorted(LABELS)
        else:
            assert 10 < row["quality"]["perplexity"] < 5000


def test_support_matrix_in_the_docs_is_the_tested_table():
    root = Path(__file__).resolve().parent.parent
    assert (root / "docs" / "support.md").read_text() == render(), \
        "regenerate it: python tests/families.py > docs/support.md"
    assert render_readme_table() in (root / "README.md").read_text(), \
        "the README's table is families.render_readme_table(): paste it again"
