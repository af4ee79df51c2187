"""`lean export --runtime openvino`: an OpenVINO IR directory, validated against PyTorch like the ONNX path.

    lean export runs/teacher -o runs/teacher-ov --runtime openvino                          # fp32
    lean export runs/teacher -o runs/teacher-ov-int8 --runtime openvino --quantize int8-static
    lean export runs/teacher -o runs/teacher-ov-w8 --runtime openvino --quantize int8-weights

Stages: lean's own fp32 ONNX export (exporters.py) into a work directory -> openvino.convert_model ->
optional NNCF (int8-static: post-training quantization of weights and activations, calibrated on
the task's train texts; int8-weights: 8-bit weight-only compression) -> model.xml + model.bin, the
weights kept in fp32 (save_model would halve them to fp16 by default) -> validation through
lean.runtime's OpenVinoModel at f32 inference precision, with export's own gates. Classifiers only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import importlib.util
import shutil
from pathlib import Path
from typing import Any

from lean.errors import LeanError, first_line

INSTALL = 'pip install "lean[openvino]"'
# --quantize with --runtime openvino -> what NNCF does (ExportConfig refuses the other methods with this runtime)
NNCF_METHODS = {"int8-static": "nncf.quantize", "int8-weights": "nncf.compress_weights"}


def check_installed(config) -> None:
    """openvino (and nncf for int8) importable, else one line saying what to install; before any model loads."""
    missing = [m for m in ("openvino", "nncf" if config.quantize else None) if m and importlib.util.find_spec(m) is None]
    if missing:
        raise LeanError(f"--runtime openvino needs {' and '.join(missing)}, not installed here: {INSTALL}")


def run(source: str, config, out: Path) -> dict[str, Any]:
    """The step: ONNX fp32 -> OpenVINO IR (-> NNCF int8) in `out`, validated and gated; the manifest's fields."""
    import openvino as ov

    from lean.export.exporters import choose_exporter
    from lean.export.step import _validation_texts, check_source
    from lean.export.validate import gate
    from lean.models import write_manifest

    check_installed(config)
    path = check_source(source)
    exporter = choose_exporter(config.exporter)
    backend = exporter.backend()
    onnx_config = dataclasses.replace(config, runtime="onnxruntime", quantize=None, latency_check=False)
    model, tokenizer, (task, max_length, inherited) = _load(source, path, config, onnx_config, backend)
    texts = _validation_texts(task, "classification", config)

    work = out / "_work"
    ov_model, details = _to_openvino(model, tokenizer, backend, onnx_config, max_length, work, out)
    if config.quantize:
        with _quiet_nncf():
            ov_model, details["nncf"] = _compress(ov_model, config, tokenizer, task, max_length)
    # compress_to_fp16=False: the IR keeps fp32 weights, so an fp32 export is fp32 on disk too
    ov.save_model(ov_model, str(out / "model.xml"), compress_to_fp16=False)
    shutil.rmtree(work)
    tokenizer.save_pretrained(out)

    write_manifest(out, {"max_length": max_length, "kind": "classification"})  # what the runtime reads to validate
    report = _validate(model, tokenizer, out, texts, max_length, config, task)
    gate(report, config, "classification")
    if task is None:
        report["validation"]["texts"] = {"source": "lean.samples", "n": len(texts)}
    return {**_manifest(out, config, task, max_length, exporter, details, report), "inherited": inherited.record()}


def _load(source: str, path: str, config, onnx_config, backend):
    """The PyTorch classifier and its fast tokenizer, checked as the ONNX path checks them; (task, max_length, record)."""
    from lean.export.step import _load_task, model_kind
    from lean.models import align_pad_token, load_config, load_model, load_tokenizer
    from lean.runtime import is_openvino_dir

    if is_openvino_dir(path) and not any(Path(path).glob("*.safetensors")):
        raise LeanError(f"'{source}' is already an OpenVINO directory: pass the PyTorch model directory it was "
                        "exported from")
    hf_config = load_config(source, config.trust_remote_code)
    if model_kind(hf_config, source) != "classification":
        raise LeanError(f"'{source}' is a causal LM: --runtime openvino exports classifiers; export causal LMs to "
                        "ONNX (drop --runtime openvino)")
    backend.check(hf_config.model_type, "classification", onnx_config)  # before any weights load
    task, max_length, inherited = _load_task(path, config)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    if not getattr(tokenizer, "is_fast", False):
        raise LeanError(f"'{source}' has no fast tokenizer (tokenizer.json), which lean.runtime needs: "
                        "save it with a transformers fast tokenizer")
    if tokenizer.pad_token is None:
        raise LeanError(f"the tokenizer of '{source}' has no pad, eos or unk token to pad batches with: "
                        "set tokenizer.pad_token and save it with the model")
    model = load_model(source, "classification", config.trust_remote_code).eval()
    align_pad_token(model, tokenizer)
    if task is not None and model.config.num_labels != task.num_labels:
        raise LeanError(f"'{source}' has {model.config.num_labels} labels but task '{task.describe().get('spec')}' "
                        f"has {task.num_labels}: pass the --task the model was trained on, or none to check against "
                        "PyTorch on sample texts")
    return model, tokenizer, (task, max_length, inherited)


def _to_openvino(model, tokenizer, backend, onnx_config, max_length: int, work: Path, out: Path) -> dict[str, Any]:
    """fp32 ONNX through lean's exporter, converted to out/model.xml + model.bin with batch and sequence dynamic."""
    import openvino as ov

    from lean.export.step import _example, _graph

    details = backend.export_fp32(model, "classification", onnx_config, _example(tokenizer, max_length),
                                  work / "fp32") or {}
    try:
        ov_model = ov.convert_model(str(_graph(work / "fp32")))
    except Exception as e:  # openvino's frontends raise their own RuntimeError subclasses
        raise LeanError(f"OpenVINO could not convert the exported ONNX model: {first_line(e)}") from None
    # (B, T) with both dynamic, whatever the exporter fixed: the runtime pads each batch to its longest text
    ov_model.reshape({port.get_any_name(): ov.PartialShape([-1, -1]) for port in ov_model.inputs})
    config_json = work / "fp32" / "config.json"
    if config_json.is_file():
        shutil.copyfile(config_json, out / "config.json")
    else:
        model.config.save_pretrained(out)
    return ov_model, {"onnx_export": details, "inputs": [p.get_any_name() for p in ov_model.inputs],
                      "dynamic_axes": {"batch": 0, "sequence": 1}}


def _compress(ov_model, config, tokenizer, task, max_length: int):
    """NNCF on `ov_model`: int8-static (calibrated on train texts) or int8-weights; (the new model, its settings)."""
    import nncf

    if config.quantize == "int8-weights":
        mode = nncf.CompressWeightsMode.INT8_ASYM
        return nncf.compress_weights(ov_model, mode=mode), {
            "method": NNCF_METHODS[config.quantize], "mode": mode.value, "weights": "int8 asymmetric, per channel",
            "activations": "fp32 (lean.runtime turns OpenVINO's dynamic quantization off)",
            "nncf_version": nncf.__version__}
    samples = _calibration_samples(tokenizer, task, config, max_length, [p.get_any_name() for p in ov_model.inputs])
    quantized = nncf.quantize(ov_model, nncf.Dataset(samples), subset_size=len(samples),
                              model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED)
    return quantized, {"method": NNCF_METHODS[config.quantize], "subset_size": len(samples),
                       "calibration": "train split" if task is not None else "lean.samples",
                       "model_type": "transformer", "preset": "mixed",
                       "smooth_quant": "nncf's default for transformers", "weights": "int8 symmetric, per channel",
                       "activations": "int8 asymmetric, per tensor", "nncf_version": nncf.__version__}


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF's progress bars and tables go to stdout, which is `lean export`'s summary: keep warnings only."""
    import logging

    import nncf

    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(level)


def _calibration_samples(tokenizer, task, config, max_length: int, names: list[str]) -> list[dict]:
    """One (1, T) int64 feed per text, unpadded: padding would add positions that never occur to the ranges."""
    from lean.samples import sample_texts

    texts = task.train.texts if task is not None else sample_texts()
    texts = texts[:config.calibration_samples]
    out = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        out.append({n: enc[n].astype("int64") for n in names if n in enc})
    return out


def _validate(model, tokenizer, out: Path, texts, max_length, config, task) -> dict[str, Any]:
    from lean.export.validate import validate_classifier
    from lean.runtime import OnnxModelError, OpenVinoModel

    try:
        ov_model = OpenVinoModel(out, provider="CPU")
    except OnnxModelError as e:
        raise LeanError(f"the exported OpenVINO model does not load: {e}") from None
    report = validate_classifier(model, tokenizer, ov_model, texts, max_length, config, task)
    report["validation"]["inference_precision"] = ov_model.precision
    return report


def _manifest(out: Path, config, task, max_length, exporter, details, report) -> dict[str, Any]:
    """What run() adds to lean.json: the runtime, precision, NNCF settings, files and the validation."""
    import openvino as ov

    from lean.models import environment

    files = [f for f in ("model.xml", "model.bin") if (out / f).is_file()]
    manifest = {
        "task": task.describe() if task is not None else None,
        "task_accuracy_checked": task is not None,
        "kind": "classification",
        "max_length": max_length,
        "runtime": "openvino",
        "exporter": exporter.describe(),
        "openvino": {**details, "version": ov.get_version(), "precision": config.precision,
                     "quantize": config.quantize, "inference_precision_hint": "f32", "device": "CPU",
                     "files": files, "size_mb": round(sum((out / f).stat().st_size for f in files) / 2**20, 3)},
        "validation": report["validation"],
        "metrics": report.get("metrics", {}),
        "source_metrics": report.get("source_metrics", {}),
        "environment": environment("CPU"),
    }
    if task is None:
        manifest["note"] = ("no task: the OpenVINO model was checked against PyTorch on lean's sample texts only; "
                            "no task accuracy was checked")
    return manifest
