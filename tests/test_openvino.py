"""`lean export --runtime openvino` (fp32, NNCF int8-static, int8-weights) and lean.runtime's OpenVinoModel:
agreement with PyTorch, `lean predict` without torch, `lean serve`, and bad input as one line.

    python -m pytest tests/test_openvino.py -n 0 -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import bbc_rows, invoke, save_tiny_bert

pytest.importorskip("openvino", reason="the OpenVINO runtime needs the openvino extra: pip install 'lean[openvino]'")
pytest.importorskip("nncf", reason="OpenVINO int8 export needs the openvino extra: pip install 'lean[openvino]'")

TEXTS = [r["text"] for r in bbc_rows(2)] + ["Short one.", "Rates rose."]


def exported(tiny_bert_dir: Path, tmp_path_factory, quantize: str | None = None) -> Path:
    """The tiny BERT exported for OpenVINO through the CLI, once per session and precision (8 test texts, 8
    calibration texts); its stdout is lean's summary alone (NNCF's progress bars kept out of it)."""
    out = tmp_path_factory.getbasetemp() / "openvino" / f"{tiny_bert_dir.name}-{quantize or 'fp32'}"
    if not (out / "model.xml").is_file():
        out.parent.mkdir(exist_ok=True)
        options = ["--quantize", quantize, "--calibration-samples", "8"] if quantize else []
        result = invoke("export", str(tiny_bert_dir), "-o", str(out), "--runtime", "openvino", "--max-eval-samples", "8",
                        *options)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert lines[0].startswith(f"wrote {out}  {'int8' if quantize else 'fp32'}"), result.stdout
        assert all(line.startswith("no task: ") for line in lines[1:]), result.stdout  # the note, without a task
    return out


@pytest.fixture(scope="session")
def ov_bert(tiny_bert_dir, tmp_path_factory) -> Path:
    return exported(tiny_bert_dir, tmp_path_factory)


def pytorch_logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        enc = tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
        return model(**enc).logits.numpy()


def test_fp32_export_is_fp32_ir_that_matches_pytorch_and_says_what_ran(ov_bert, tiny_bert_dir):
    from lean.runtime import OpenVinoModel, load

    manifest = json.loads((ov_bert / "lean.json").read_text())
    assert manifest["step"] == "export" and manifest["runtime"] == "openvino" and manifest["kind"] == "classification"
    ov = manifest["openvino"]
    assert ov["precision"] == "fp32" and ov["quantize"] is None and "nncf" not in ov
    assert ov["inference_precision_hint"] == "f32" and ov["files"] == ["model.xml", "model.bin"]
    assert manifest["validation"]["max_abs_diff"] <= 1e-4 and manifest["validation"]["agreement"] == 1.0
    assert manifest["task_accuracy_checked"] and manifest["metrics"]["test"]["n"] == 8
    assert not (ov_bert / "model.onnx").exists() and not (ov_bert / "_work").exists()

    model = load(ov_bert)
    assert isinstance(model, OpenVinoModel) and model.provider == "CPU" and model.precision == "f32"
    # the weights stay fp32 on disk (OpenVINO's save_model would halve them to fp16 unless told not to)
    params = sum(np.prod(p.shape) for p in _state_dict(tiny_bert_dir).values())
    assert (ov_bert / "model.bin").stat().st_size >= 4 * params * 0.95
    got = model.logits(TEXTS, batch_size=3)  # length-sorted batches of 3, each padded to its longest
    np.testing.assert_allclose(got, pytorch_logits(tiny_bert_dir, TEXTS), atol=1e-4)
    assert [p["label"] for p in model.predict(TEXTS)] == [model.label_names[i] for i in got.argmax(-1)]


def _state_dict(model_dir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="session")
def tiny_bert_without_task(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert-no-task")


# int8-static on the model with a task (calibrated on its train split, gated on test accuracy), int8-weights on
# one without (checked against PyTorch on lean's sample texts)
@pytest.mark.parametrize("method,nncf_call", [("int8-static", "nncf.quantize"), ("int8-weights", "nncf.compress_weights")])
def test_int8_exports_record_their_nncf_settings_and_agree_with_pytorch(tiny_bert_dir, tiny_bert_without_task,
                                                                        tmp_path_factory, ov_bert, method, nncf_call):
    source = tiny_bert_dir if method == "int8-static" else tiny_bert_without_task
    out = exported(source, tmp_path_factory, method)
    manifest = json.loads((out / "lean.json").read_text())
    ov = manifest["openvino"]
    assert ov["precision"] == "int8" and ov["quantize"] == method and ov["nncf"]["method"] == nncf_call
    if method == "int8-static":
        assert ov["nncf"]["subset_size"] == 8 and ov["nncf"]["calibration"] == "train split"
        assert manifest["task_accuracy_checked"] and "test" in manifest["metrics"]
    else:
        assert manifest["task"] is None and not manifest["task_accuracy_checked"] and "sample texts" in manifest["note"]
        assert manifest["validation"]["texts"]["source"] == "lean.samples"
    assert manifest["validation"]["agreement"] >= 0.98  # the gate export applies to int8
    assert (out / "model.bin").stat().st_size < 0.5 * (ov_bert / "model.bin").stat().st_size

    from lean.runtime import load

    got = load(out).logits(TEXTS)
    reference = pytorch_logits(source, TEXTS)
    assert np.abs(got - reference).max() < 0.1  # int8 rounding on a random model's small logits, not a mismatch


def test_lean_predict_runs_the_directory_without_torch(ov_bert):
    code = (
        "import sys, json\n"
        "from lean.cli import main\n"
        f"sys.argv = ['lean', 'predict', {str(ov_bert)!r}, 'Shares rose.', 'The match ended.']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'onnxruntime') if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"heavy": []}
    rows = [json.loads(line) for line in lines[:-1]]
    assert len(rows) == 2 and all(r["label"] in ("business", "entertainment", "politics", "sport", "tech") for r in rows)


def test_lean_serve_batches_and_answers_as_lean_predict_does(ov_bert):
    pytest.importorskip("fastapi", reason="lean serve needs the serve extra: pip install 'lean[serve]'")
    pytest.importorskip("prometheus_client", reason="lean serve needs the serve extra: pip install 'lean[serve]'")
    import asyncio

    from test_serve import _assert_same_predictions, _samples, app_for, running

    cli = invoke("predict", str(ov_bert), *TEXTS)
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line) for line in cli.stdout.splitlines()]

    async def main():
        async with running(app_for(ov_bert, max_wait_ms=50)) as client:
            models = (await client.get("/v1/models")).json()
            singles = await asyncio.gather(*[client.post("/v1/models/bert/predict", json={"texts": [t]})
                                             for t in TEXTS])
            return models, singles, (await client.get("/metrics")).text

    models, singles, metrics = asyncio.run(main())
    assert all(r.status_code == 200 for r in singles)
    _assert_same_predictions([r.json()["predictions"][0] for r in singles], expected)
    assert "CPU" in json.dumps(models)
    assert sum(_samples(metrics, "lean_batch_size_count").values()) < len(TEXTS), "concurrent requests never batched"


def _one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_export_options_are_one_line_before_any_work(tiny_bert_dir, tmp_path):
    out = str(tmp_path / "out")
    _one_line_error(invoke("export", str(tiny_bert_dir), "-o", out, "--runtime", "tensorrt"), "--runtime")
    _one_line_error(invoke("export", str(tiny_bert_dir), "-o", out, "--runtime", "openvino", "--quantize",
                           "int8-dynamic"), "int8-static", "int8-weights")
    _one_line_error(invoke("export", str(tiny_bert_dir), "-o", out, "--runtime", "openvino", "--optimize", "O2"),
                    "OpenVINO fuses")
    _one_line_error(invoke("export", str(tiny_bert_dir), "-o", out, "--quantize", "int8-weights"), "--runtime openvino")
    assert not (tmp_path / "out").exists()


def test_a_causal_lm_is_refused_in_one_line(tiny_llama_dir, tmp_path):
    _one_line_error(invoke("export", str(tiny_llama_dir), "-o", str(tmp_path / "out"), "--runtime", "openvino"),
                    "causal LM", "drop --runtime openvino")
    assert not (tmp_path / "out").exists()


def test_bad_directories_and_devices_are_one_line(ov_bert, tmp_path):
    import shutil

    _one_line_error(invoke("predict", str(ov_bert), "--provider", "CUDAExecutionProvider", "hi"),
                    "onnxruntime provider", "CPU")
    _one_line_error(invoke("predict", str(ov_bert), "--provider", "NPU", "hi"), "'NPU' is not available")
    broken = tmp_path / "broken"
    shutil.copytree(ov_bert, broken)
    (broken / "model.xml").write_text("<net><layers>")
    _one_line_error(invoke("predict", str(broken), "hi"), "not a valid OpenVINO model")
    (broken / "model.bin").unlink()
    _one_line_error(invoke("predict", str(broken), "hi"), "model.bin")
    _one_line_error(invoke("export", str(ov_bert), "-o", str(tmp_path / "again"), "--runtime", "openvino"),
                    "already an OpenVINO directory")


def test_the_triton_writer_refuses_an_openvino_directory_in_one_line(ov_bert, tmp_path):
    pytest.importorskip("fastapi", reason="lean serve needs the serve extra: pip install 'lean[serve]'")
    _one_line_error(invoke("serve", str(ov_bert), "--triton-repository", str(tmp_path / "repo")),
                    "OpenVINO directory", "lean serve")
    assert not (tmp_path / "repo").exists()
