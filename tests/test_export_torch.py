"""lean export without optimum: torch.onnx (dynamo) + onnxruntime's optimizer and quantizer, and the exporter table.

    python -m pytest tests/test_export_torch.py -x -q        # ~2 min on 2 cores
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from export_models import LABELS, save_named_classifier
from lean.errors import LeanError


@pytest.fixture(scope="module")
def named_bert(tmp_path_factory) -> Path:
    return save_named_classifier(tmp_path_factory.mktemp("models") / "bert-3")


@pytest.fixture(scope="module")
def torch_fp32(named_bert, tmp_path_factory) -> Path:
    from lean.export import ExportConfig, export

    return export(str(named_bert), ExportConfig(exporter="torch"), str(tmp_path_factory.mktemp("onnx") / "fp32"))


def _manifest(path: Path) -> dict:
    return json.loads((path / "lean.json").read_text())


def _pytorch_logits(source: Path, texts: list[str], max_length: int = 128) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    with torch.inference_mode():
        return np.concatenate([model(**tok([t], truncation=True, max_length=max_length, return_tensors="pt")).logits.numpy()
                               for t in texts])


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path / "model.onnx")).graph.node}


def test_torch_fp32_export_matches_pytorch_and_records_the_exporter(torch_fp32, named_bert):
    from lean.runtime import load

    m = _manifest(torch_fp32)
    assert m["exporter"]["name"] == "torch" and {"torch", "onnxscript", "onnxruntime"} & set(m["exporter"]["versions"])
    assert "onnxscript" in m["exporter"]["versions"] and "optimum_task" not in m["onnx"]
    assert m["onnx"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and m["onnx"]["opset"] >= 18
    assert m["task"] is None and m["task_accuracy_checked"] is False and "no task accuracy was checked" in m["note"]
    v = m["validation"]
    assert v["texts"] == {"source": "lean.samples", "n": 25} and v["agreement"] == 1.0 and v["max_abs_diff"] <= 1e-4
    # texts the validation did not see, one at a time and batched (dynamic batch and sequence axes)
    texts = ["Terrible service, never again.", "It was fine I guess", "Absolutely wonderful evening!!! 🎉"]
    ref = _pytorch_logits(named_bert, texts)
    model = load(torch_fp32)
    np.testing.assert_allclose(model.logits(texts, batch_size=3), ref, atol=1e-4)
    np.testing.assert_allclose(model.logits(texts, batch_size=1), ref, atol=1e-4)
    assert model.label_names == LABELS


def test_torch_int8_dynamic_quantizes_and_its_recorded_error_is_the_real_one(named_bert, torch_fp32, tmp_path):
    from lean.export import ExportConfig, export
    from lean.runtime import load
    from lean.samples import sample_texts

    out = export(str(named_bert), ExportConfig(exporter="torch", quantize="int8-dynamic", min_agreement=0.0),
                 str(tmp_path / "int8"))
    m = _manifest(out)
    assert m["onnx"]["precision"] == "int8" and m["onnx"]["quantization"]["format"] == "QOperator"
    assert _ops(out) & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, _ops(out)
    assert m["onnx"]["size_mb"] < 0.6 * _manifest(torch_fp32)["onnx"]["size_mb"]
    # the manifest's figures are what PyTorch and onnxruntime give on the shipped samples, recomputed here
    texts = sample_texts()
    got, ref = load(out).logits(texts, batch_size=32), _pytorch_logits(named_bert, texts)
    case = next(c for c in m["validation"]["cases"] if c.get("texts") == "samples")
    assert case["max_abs_diff"] == pytest.approx(float(np.abs(got - ref).max()), rel=1e-3, abs=1e-6)
    assert m["validation"]["agreement"] == pytest.approx(float((got.argmax(-1) == ref.argmax(-1)).mean()), abs=1e-6)
    assert 0 < case["max_abs_diff"]  # int8 is not bit-exact


def test_torch_int8_static_and_o2_fusions(named_bert, tmp_path):
    from lean.export import ExportConfig, export

    static = export(str(named_bert), ExportConfig(exporter="torch", quantize="int8-static", calibration_samples=16,
                                                  min_agreement=0.0), str(tmp_path / "static"))
    assert "QuantizeLinear" in _ops(static) and _manifest(static)["onnx"]["quantization"]["is_static"] is True
    fused = export(str(named_bert), ExportConfig(exporter="torch", optimize="O2"), str(tmp_path / "o2"))
    m = _manifest(fused)
    assert m["onnx"]["fused_operators"].get("SkipLayerNormalization", 0) > 0, m["onnx"]
    assert "SkipLayerNormalization" in _ops(fused) and m["validation"]["max_abs_diff"] <= 1e-4


def test_torch_export_of_a_model_with_a_task_gates_accuracy_as_before(tiny_bert_dir, tmp_path):
    from lean.export import ExportConfig, export

    out = export(str(tiny_bert_dir), ExportConfig(exporter="torch", max_eval_samples=16), str(tmp_path / "task"))
    m = _manifest(out)
    assert m["task"]["name"] == "bbc-news" and m["task_accuracy_checked"] is True and "note" not in m
    assert m["metrics"]["test"]["n"] == 16
    assert m["metrics"]["test"]["accuracy"] == m["source_metrics"]["test"]["accuracy"]


def test_predict_prints_the_models_own_label_names(torch_fp32):
    result = invoke("predict", str(torch_fp32), "Lovely!", "Awful.")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and all(r["label"] in LABELS and sorted(r["scores"]) == sorted(LABELS) for r in rows)


# ---- the exporter table: choices, refusals before any weights load ---------------------------------

def _config_only(path: Path, model_type: str, arch: str) -> Path:
    """A config with empty weights: an exporter that loaded them would fail differently."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch], "num_labels": 3}))
    (path / "model.safetensors").write_bytes(b"")
    return path


@pytest.mark.parametrize("exporter", ["torch", "optimum"])
def test_unknown_architecture_is_refused_up_front_in_one_line(exporter, tmp_path):
    from lean.export.exporters import EXPORTERS

    if not EXPORTERS[exporter].available():
        pytest.skip(f"the {exporter} exporter is not installed here")
    fnet = _config_only(tmp_path / "fnet", "fnet", "FNetForSequenceClassification")
    result = invoke("export", str(fnet), "-o", str(tmp_path / "out"), "--exporter", exporter)
    assert result.returncode == 2 and "cannot export model type 'fnet'" in result.stderr, result.stderr
    assert "supported types: " in result.stderr and "bert" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_torch_exporter_refuses_causal_lms_naming_the_extra(tmp_path):
    llama = _config_only(tmp_path / "llama", "llama", "LlamaForCausalLM")
    result = invoke("export", str(llama), "-o", str(tmp_path / "out"), "--exporter", "torch")
    assert result.returncode == 2 and 'pip install "lean[optimum]"' in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_exporter_choice(monkeypatch):
    from lean.export import ExportConfig
    from lean.export.exporters import EXPORTERS, Exporter, choose_exporter

    with pytest.raises(LeanError, match="--exporter must be one of auto, torch, optimum"):
        ExportConfig(exporter="tf2onnx")
    assert choose_exporter("auto").name == ("optimum" if EXPORTERS["optimum"].available() else "torch")
    monkeypatch.setattr(Exporter, "available", lambda self: self.name != "optimum")
    assert choose_exporter("auto").name == "torch"
    with pytest.raises(LeanError, match=r'optimum exporter is not installed here: pip install "lean\[optimum\]"'):
        choose_exporter("optimum")
