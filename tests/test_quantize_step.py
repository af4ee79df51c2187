"""The step without a task: a plain Hugging Face model, no lean.json, no --task.

    python -m pytest tests/test_quantize_step.py -q

Calibration and the SQNR / output-error report run on lean's sample texts; no accuracy is computed,
and both the manifest and the command's output say so. (With a task: tests/test_quantize.py.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def plain_classifier(tmp_path_factory):
    """A 3-label BERT with named labels, saved by plain transformers: no lean.json."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lean.models import builtin_model_path

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("plain") / "bert-3"
    tok = AutoTokenizer.from_pretrained(builtin_model_path("minilm-l6"))
    labels = ["negative", "neutral", "positive"]
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=3, id2label=dict(enumerate(labels)),
                        label2id={name: i for i, name in enumerate(labels)})
    BertForSequenceClassification(config).eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def test_cli_on_a_plain_classifier_without_a_task(plain_classifier, tmp_path):
    from lean.models import read_manifest
    from lean.samples import sample_texts

    assert not (plain_classifier / "lean.json").exists()
    out = tmp_path / "q"
    done = run_cli("quantize", str(plain_classifier), "--method", "bnb-nf4", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "no task accuracy was checked: no task given (--task) and none in the source's lean.json" in done.stdout
    assert "test accuracy" not in done.stdout
    assert "Failed to load CPU gemm_4bit_forward" not in done.stderr
    manifest = read_manifest(out)
    q = manifest["quantization"]
    texts = sample_texts()
    assert q["calibration"] == {"task": None, "split": None, "samples": len(texts), "max_length": 128, "texts": "lean.samples"}
    assert q["output"]["positions"] == len(texts)  # one logits row per sample text
    assert len(q["layers"]) == 2 * 6 + 1 and all(10 < layer["sqnr_db"] < 40 for layer in q["layers"])
    assert manifest["task"] is None and "metrics" not in manifest
    assert manifest["task_accuracy"] == {"checked": False, "why": "no task given (--task) and none in the source's lean.json"}


def test_causal_lm_without_a_task_calibrates_on_the_sample_texts(tiny_llama_dir, tmp_path):
    """The figures come from exactly the first N sample texts: positions = their real (unpadded) tokens."""
    from lean.models import load_tokenizer, read_manifest
    from lean.quantize import config_from_dict, quantize_dir
    from lean.samples import sample_texts

    out = quantize_dir(str(tiny_llama_dir), config_from_dict(method="dynamic-int8", calibration_samples=6, max_length=32),
                       str(tmp_path / "llama-dyn"))
    manifest = read_manifest(out)
    enc = load_tokenizer(str(tiny_llama_dir))(sample_texts()[:6], truncation=True, max_length=32)
    assert manifest["quantization"]["output"]["positions"] == sum(len(ids) for ids in enc["input_ids"])
    assert manifest["quantization"]["calibration"]["texts"] == "lean.samples"
    assert manifest["task_accuracy"]["checked"] is False and "metrics" not in manifest


def test_importing_bitsandbytes_through_lean_drops_only_the_kernel_notice(tmp_path):
    """bitsandbytes logs 'Failed to load CPU gemm_4bit_forward' at import on AVX512-BF16 CPUs; lean drops
    that line and keeps every other warning of the same logger."""
    script = ("import logging, lean.quantize as Q\n"
              "Q.import_bitsandbytes()\n"
              "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('a real warning')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "a real warning" in done.stderr and "gemm_4bit_forward" not in done.stderr
    plain = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True, cwd=tmp_path)
    from bitsandbytes.functional import has_avx512bf16

    if has_avx512bf16():  # where bitsandbytes prints the line, the plain import must show it (the test can fail)
        assert "Failed to load CPU gemm_4bit_forward" in plain.stderr, plain.stderr
