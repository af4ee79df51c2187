"""lean export of a user's own model: no lean.json, no task, its own label names, a tokenizer without EOS.

    python -m pytest tests/test_export_no_task.py -x -q        # ~2 min on 2 cores
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from export_models import HAS_OPTIMUM, LABELS, NEEDS_OPTIMUM, save_gpt2_without_eos, save_named_classifier


def _manifest(path: Path) -> dict:
    return json.loads((path / "lean.json").read_text())


def test_cli_exports_a_plain_classifier_with_no_task_and_predict_prints_its_labels(tmp_path):
    """`lean export DIR -o OUT`, as a user would, on a 3-label classifier that has no lean.json."""
    source = save_named_classifier(tmp_path / "mine")
    out = tmp_path / "mine-onnx"
    result = run_cli("export", str(source), "-o", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no task accuracy was checked" in result.stdout and "agreement 100.00%" in result.stdout
    m = _manifest(out)
    exporter = "optimum" if HAS_OPTIMUM else "torch"
    assert m["exporter"]["name"] == exporter and f"(exporter: {exporter})" in result.stdout
    assert m["task"] is None and m["task_accuracy_checked"] is False and m["metrics"] == {}
    predicted = run_cli("predict", str(out), "What a lovely day", "This is dreadful")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [sorted(r["scores"]) for r in rows] == [sorted(LABELS)] * 2 and {r["label"] for r in rows} <= set(LABELS)


@pytest.mark.skipif(not HAS_OPTIMUM, reason="optimum-onnx is not installed: this checks its exporter")
def test_optimum_exports_a_named_classifier_with_no_task(tmp_path):
    from lean.export import ExportConfig, export
    from lean.runtime import load

    source = save_named_classifier(tmp_path / "mine", labels=["spam", "ham", "promo", "other"])
    out = export(str(source), ExportConfig(exporter="optimum"), str(tmp_path / "onnx"))
    m = _manifest(out)
    assert m["exporter"]["name"] == "optimum" and m["onnx"]["optimum_task"] == "text-classification"
    assert m["validation"]["texts"] == {"source": "lean.samples", "n": 25} and "no task accuracy" in m["note"]
    preds = load(out).predict(["Win a free prize now!!!"])
    assert sorted(preds[0]["scores"]) == sorted(["spam", "ham", "promo", "other"])


def test_seven_labels_without_token_type_ids_through_torch(tmp_path):
    """A 7-label DistilBERT (no token_type_ids input) exported by torch.onnx against PyTorch on the samples."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lean.export import ExportConfig, export
    from lean.runtime import load

    labels = [f"class-{c}" for c in "abcdefg"]
    source = save_named_classifier(tmp_path / "distil", labels=labels, model_type="distilbert")
    out = export(str(source), ExportConfig(exporter="torch"), str(tmp_path / "onnx"))
    model = load(out)
    assert model.input_names == ["input_ids", "attention_mask"] and model.label_names == labels
    texts = ["Une phrase en français.", "short", "A longer English sentence with numbers 1, 2 and 3."]
    enc = AutoTokenizer.from_pretrained(source)(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        ref = AutoModelForSequenceClassification.from_pretrained(source).eval()(**enc).logits.numpy()
    np.testing.assert_allclose(model.logits(texts), ref, atol=1e-4)


@pytest.mark.skipif(not HAS_OPTIMUM, reason=NEEDS_OPTIMUM)
def test_gpt2_whose_tokenizer_has_no_eos_exports_and_predicts(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = save_gpt2_without_eos(tmp_path / "gpt2")
    tok = AutoTokenizer.from_pretrained(source)
    assert tok.eos_token is None and tok.pad_token is None
    out = tmp_path / "onnx"
    result = run_cli("export", str(source), "-o", str(out), "--max-eval-samples", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "samples perplexity" in result.stdout and "no task accuracy was checked" in result.stdout
    m = _manifest(out)
    v = m["validation"]
    assert m["kind"] == "lm" and m["exporter"]["name"] == "optimum" and m["task_accuracy_checked"] is False
    assert v["generation_agreement"] == 1.0 and v["perplexity"]["split"] == "samples"
    assert v["perplexity"]["ratio"] == pytest.approx(1.0, abs=1e-4) and v["perplexity"]["tokens"] > 100

    predicted = run_cli("predict", str(out), "The minister said", "--max-new-tokens", "6")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    generated = json.loads(predicted.stdout)["generated_text"]
    enc = tok(["The minister said"], return_tensors="pt", return_token_type_ids=False)
    with torch.inference_mode():
        ref = AutoModelForCausalLM.from_pretrained(source).eval().generate(**enc, max_new_tokens=6, do_sample=False)
    assert generated == tok.decode(ref[0, enc["input_ids"].shape[1]:])  # without EOS, all 6 tokens come back
