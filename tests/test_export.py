"""lean export: ONNX export of tiny classifiers and causal LMs, validated against PyTorch.

    python -m pytest tests/test_export.py -x -q        # ~1 min on 2 cores
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from export_models import HAS_OPTIMUM, NEEDS_OPTIMUM
from lean.errors import LeanError


def _export(source: Path, out: Path, **options) -> Path:
    from lean.export import ExportConfig, export

    return export(str(source), ExportConfig(max_eval_samples=options.pop("max_eval_samples", 24), **options), str(out))


@pytest.fixture(scope="session")
def bert_fp32(tiny_bert_dir, tmp_path_factory) -> Path:
    return _export(tiny_bert_dir, tmp_path_factory.mktemp("export") / "bert-fp32")


def _manifest(path: Path) -> dict:
    return json.loads((path / "lean.json").read_text())


# ---- classifiers ----------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_OPTIMUM, reason="optimum-onnx is not installed: this checks its exporter and loads the result in its ORTModel")
def test_fp32_export_matches_pytorch_and_loads_in_optimum(bert_fp32, tiny_bert_dir):
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    m = _manifest(bert_fp32)
    assert m["step"] == "export" and m["kind"] == "classification" and m["task"]["name"] == "bbc-news"
    assert m["exporter"]["name"] == "optimum" and "optimum-onnx" in m["exporter"]["versions"]
    assert m["task_accuracy_checked"] is True and "note" not in m
    v = m["validation"]
    assert v["max_abs_diff"] <= 1e-4 and v["agreement"] == 1.0 and v["disagreements"] == 0 and v["n"] == 24
    assert any(c["padded"] for c in v["cases"]) and {c["batch_size"] for c in v["cases"]} >= {1, 4, 8}
    assert m["metrics"]["test"]["n"] == 24 and m["metrics"]["test"]["accuracy"] == m["source_metrics"]["test"]["accuracy"]
    assert m["onnx"]["precision"] == "fp32" and m["onnx"]["opset"] >= 11 and m["max_length"] == 128
    assert not (bert_fp32 / "_work").exists()

    # an independent check through optimum's own ORTModel, on texts the validation did not see
    texts = ["Shares in the bank fell 5% after the results.", "The striker scored twice in the final.", "Hi"]
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()(**enc).logits.numpy()
    ort_model = ORTModelForSequenceClassification.from_pretrained(bert_fp32)
    got = ort_model(**enc).logits
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)


def test_int8_static_calibrates_quantizes_and_reports_gates(tiny_bert_dir, bert_fp32, tmp_path):
    out = _export(tiny_bert_dir, tmp_path / "int8", quantize="int8-static", calibration_samples=16,
                  min_agreement=0.0, max_metric_drop=100.0)
    m = _manifest(out)
    assert m["onnx"]["precision"] == "int8" and m["onnx"]["quantize"] == "int8-static"
    assert m["onnx"]["size_mb"] < 0.6 * _manifest(bert_fp32)["onnx"]["size_mb"]  # int8 weights
    assert 0 <= m["validation"]["agreement"] <= 1 and "accuracy" in m["metrics"]["test"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops or any(op.startswith("QLinear") for op in ops), ops


def test_o2_then_int8_dynamic_runs_in_the_runtime(tiny_bert_dir, tmp_path):
    from lean.runtime import load

    out = _export(tiny_bert_dir, tmp_path / "dyn", optimize="O2", quantize="int8-dynamic", min_agreement=0.0,
                  max_metric_drop=100.0)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, ops
    preds = load(out).predict(["Shares fell.", "The team won."])
    assert len(preds) == 2 and _manifest(out)["validation"]["max_abs_diff"] > 0


def test_failed_fp32_gate_leaves_nothing_and_says_by_how_much(tiny_bert_dir, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(LeanError, match=r"failed validation: logits differ from PyTorch by up to .* \(atol 1e-15\)"):
        _export(tiny_bert_dir, out, atol=1e-15, max_eval_samples=8)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_quantized_gate_checks_agreement_and_metric_drop():
    from lean.export import ExportConfig, _gate

    def report(agreement, acc, source_acc):
        return {"validation": {"agreement": agreement, "max_abs_diff": 0.3, "disagreements": 1, "n": 100},
                "metrics": {"test": {"accuracy": acc, "macro_f1": acc}},
                "source_metrics": {"test": {"accuracy": source_acc, "macro_f1": source_acc}}}

    config = ExportConfig(quantize="int8-dynamic")
    _gate(report(0.99, 0.975, 0.98), config, "classification")  # 0.5 points down, 99% agreement: passes
    with pytest.raises(LeanError, match=r"accuracy 96.00 is 2.00 points below the source's 98.00"):
        _gate(report(0.99, 0.96, 0.98), config, "classification")
    with pytest.raises(LeanError, match=r"agrees with PyTorch on 90.00% of predictions"):
        _gate(report(0.90, 0.98, 0.98), config, "classification")


def test_quantized_lm_gate_is_on_perplexity_not_on_near_tied_argmax():
    from lean.export import ExportConfig, _gate

    def report(agreement, ratio):
        return {"validation": {"agreement": agreement, "max_abs_diff": 0.3, "disagreements": 3, "n": 55,
                               "perplexity": {"pytorch": 100.0, "onnx": 100.0 * ratio, "ratio": ratio}}}

    config = ExportConfig(quantize="int8-dynamic")
    _gate(report(0.9455, 1.01), config, "lm")  # argmax flips where two tokens are nearly tied: recorded, not gated
    with pytest.raises(LeanError, match=r"int8 test perplexity 110.000 is 1.100x PyTorch's 100.000 \(at most 1.05x"):
        _gate(report(1.0, 1.10), config, "lm")
    _gate(report(1.0, 1.10), ExportConfig(quantize="int8-dynamic", max_perplexity_ratio=1.2), "lm")
    with pytest.raises(LeanError, match="max-perplexity-ratio must be between 1 and 100"):
        ExportConfig(max_perplexity_ratio=0.9)


# ---- causal LMs -----------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_OPTIMUM, reason=NEEDS_OPTIMUM)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_causal_lm_export_with_kv_cache_generates_like_pytorch(arch, tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lean.runtime import load

    source = tiny_llama_dir if arch == "llama" else tiny_gpt2_dir
    out = _export(source, tmp_path / arch, max_eval_samples=4)
    m = _manifest(out)
    v = m["validation"]
    assert m["kind"] == "lm" and m["onnx"]["optimum_task"] == "text-generation-with-past"
    assert v["max_abs_diff"] <= 1e-4 and v["generation_agreement"] == 1.0 and v["generation"]["identical"] == 4
    # the same windows scored by onnxruntime and by PyTorch: the same perplexity
    assert v["perplexity"]["tokens"] > 100 and v["perplexity"]["ratio"] == pytest.approx(1.0, abs=1e-4)
    model = load(out)
    assert any(n.startswith("past_key_values") for n in model.input_names)
    tok = AutoTokenizer.from_pretrained(source)
    enc = tok(["The minister said"], return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        ref = AutoModelForCausalLM.from_pretrained(source).eval().generate(**enc, max_new_tokens=8, do_sample=False,
                                                                           pad_token_id=tok.eos_token_id)
    assert model.generate_ids(["The minister said"], max_new_tokens=8)[0] == [
        t for t in ref[0, enc["input_ids"].shape[1]:].tolist() if t != tok.eos_token_id]


# ---- configs --------------------------------------------------------------------------------------

def test_step_config_builds_every_harness_variant():
    from lean.export import ExportConfig
    from lean.steps import step_config

    variants = {"onnx-fp32": {}, "onnx-O2": {"optimize": "O2"}, "onnx-int8-dynamic": {"quantize": "int8-dynamic"},
                "onnx-int8-static": {"quantize": "int8-static", "calibration_samples": 64}, "onnx-fp16": {"fp16": True}}
    built = {name: step_config("export", values) for name, values in variants.items()}
    assert all(isinstance(c, ExportConfig) for c in built.values())
    assert [c.precision for c in built.values()] == ["fp32", "fp32", "int8", "int8", "fp16"]
    assert step_config("export", {"optimize": "o4"}).fp16  # O4 is fp16
    with pytest.raises(LeanError, match="has no option"):
        step_config("export", {"quantise": "int8-dynamic"})
    for bad, message in [({"optimize": "O9"}, "--optimize must be one of"), ({"quantize": "int4"}, "--quantize must be one of"),
                         ({"fp16": True, "quantize": "int8-dynamic"}, "do not combine"), ({"atol": 0}, "--atol must be a positive number"),
                         ({"calibration_samples": 0}, "--calibration-samples"),
                         ({"optimize": "O2", "quantize": "int8-static"}, "do not combine")]:
        with pytest.raises(LeanError, match=message):
            step_config("export", bad)


# ---- bad input through the CLI --------------------------------------------------------------------

def test_cli_export_bad_input_exits_2_with_one_line(bert_fp32, tiny_bert_dir, tmp_path):
    not_model = tmp_path / "notes"
    not_model.mkdir()
    (not_model / "readme.txt").write_text("hello")
    fnet = tmp_path / "fnet"  # a classifier architecture transformers has and optimum cannot export
    fnet.mkdir()
    (fnet / "config.json").write_text(json.dumps({"model_type": "fnet", "architectures": ["FNetForSequenceClassification"],
                                                  "num_labels": 5}))
    (fnet / "model.safetensors").write_bytes(b"")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    cases = [
        ((str(not_model),), "not a model directory"),
        ((str(bert_fp32),), "already an ONNX directory"),
        ((str(fnet),), "cannot export model type 'fnet'"),
        ((str(tiny_bert_dir), "--fp16"), "need a CUDA GPU"),
        ((str(tiny_bert_dir), "--quantize", "int4"), "--quantize must be one of int8-dynamic, int8-static"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        result = run_cli("export", *args, "-o", str(out))
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not out.exists()
        if args[0] == str(fnet):
            assert "supported types: " in result.stderr and "bert" in result.stderr  # names what is supported
    result = run_cli("export", str(tiny_bert_dir), "-o", str(busy))
    assert result.returncode == 2 and "not empty" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "fnet", "notes"]  # no temp dirs left behind


def test_cli_export_prints_the_validation_summary(tiny_bert_dir, tmp_path):
    result = run_cli("export", str(tiny_bert_dir), "-o", str(tmp_path / "onnx"), "--max-eval-samples", "8", "--optimize", "O2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fp32  max|diff|" in result.stdout and "agreement 100.00%" in result.stdout
    assert _manifest(tmp_path / "onnx")["onnx"]["optimize"] == "O2"
