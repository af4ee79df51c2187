"""The export step: load, export (optimum or torch.onnx), optimize, quantize, validate, gate.

The model's task (given, or in the source's lean.json) supplies validation texts, test metrics and
calibration texts; a model without one is checked against PyTorch on `lean.samples` only, and the
manifest says that no task accuracy was checked.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lean.errors import LeanError
from lean.export.config import ExportConfig
from lean.export.exporters import choose_exporter


def export(model: str, config: ExportConfig, output: str, overwrite: bool = False) -> Path:
    """Export `model` (a PyTorch model directory) to a validated ONNX directory at `output`."""
    from lean.steps import run_step

    check_source(model)
    choose_exporter(config.exporter)  # a missing exporter is reported before any model is loaded
    _validation_provider(config)  # so is a missing GPU
    return run_step("export", model, config, output, overwrite=overwrite)


def check_source(source: str) -> str:
    """The resolved source directory, or a one-line error for anything lean export cannot take."""
    from lean.models import is_onnx_dir, resolve_model

    path = resolve_model(source)
    if Path(path).is_dir() and is_onnx_dir(path) and not any(Path(path).glob("*.safetensors")):
        raise LeanError(f"'{source}' is already an ONNX directory: pass the PyTorch model directory it was exported from")
    return path


def model_kind(hf_config, source: str) -> str:
    """'classification' or 'lm' from the config's architectures, else a clear error."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classification"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "lm"
    raise LeanError(f"'{source}' is a {', '.join(archs) or 'model without architectures'}: lean export handles "
                    "sequence classifiers (*ForSequenceClassification) and causal LMs (*ForCausalLM)")


def _load_task(path: str, config: ExportConfig):
    """The task given or inherited from the source's lean.json (lean.lineage), else None; max_length; the record."""
    from lean.lineage import inherit

    inherited = inherit(path if Path(path).is_dir() else None, {
        "task": config.task, "split_seed": config.split_seed, "text_column": config.text_column,
        "label_column": config.label_column, "max_length": config.max_length})
    task = inherited.load_task() if inherited.task is not None else None
    return task, inherited.max_length, inherited


def run(source: str, config: ExportConfig, out: Path) -> dict[str, Any]:
    """The step: export, optimize, quantize, validate; leaves model.onnx + config + tokenizer in `out`."""
    from lean.models import align_pad_token, load_config, load_model, load_tokenizer, write_manifest

    path = check_source(source)
    exporter = choose_exporter(config.exporter)
    backend = exporter.backend()
    validate_on = _validation_provider(config)
    hf_config = load_config(source, config.trust_remote_code)
    kind = model_kind(hf_config, source)
    backend.check(hf_config.model_type, kind, config)  # before any weights load
    if config.quantize == "int8-static" and kind == "lm":
        raise LeanError("--quantize int8-static supports classifiers; for causal LMs use --quantize int8-dynamic")
    task, max_length, inherited = _load_task(path, config)

    tokenizer = load_tokenizer(source, config.trust_remote_code)
    if not getattr(tokenizer, "is_fast", False):
        raise LeanError(f"'{source}' has no fast tokenizer (tokenizer.json), which lean.runtime needs: "
                        "save it with a transformers fast tokenizer")
    if kind == "classification" and tokenizer.pad_token is None:
        raise LeanError(f"the tokenizer of '{source}' has no pad, eos or unk token to pad batches with: "
                        "set tokenizer.pad_token and save it with the model")
    model = load_model(source, kind, config.trust_remote_code).eval()
    align_pad_token(model, tokenizer)
    if task is not None and kind == "classification" and model.config.num_labels != task.num_labels:
        raise LeanError(f"'{source}' has {model.config.num_labels} labels but task '{task.describe().get('spec')}' has {task.num_labels}: "
                        "pass the --task the model was trained on, or none to check against PyTorch on sample texts")
    texts = _validation_texts(task, kind, config)

    work = out / "_work"
    details, quantization = _stages(backend, model, kind, config, tokenizer, task, max_length, hf_config.model_type, work)
    for file in _final_stage(config, work).iterdir():  # the final stage's files, with the graph named model.onnx
        name = "model.onnx" if file.suffix == ".onnx" else file.name
        shutil.move(str(file), out / name)
    tokenizer.save_pretrained(out)  # with the pad token lean set, so runtime pads like PyTorch did

    # The manifest is read by lean.runtime for max_length; write a provisional one for validation.
    write_manifest(out, {"max_length": max_length, "kind": kind})
    report = _validate(model, tokenizer, out, validate_on, texts, max_length, config, kind, task)
    from lean.export.validate import gate

    gate(report, config, kind)
    if config.latency_check and kind == "classification":
        details["latency_check"] = _latency_check(backend, config, out, work, texts, max_length)
    shutil.rmtree(work)
    if task is None:
        report["validation"]["texts"] = {"source": "lean.samples", "n": len(texts)}
    return {**_manifest(out, config, kind, task, max_length, exporter, details, quantization, report, validate_on),
            "inherited": inherited.record()}


def _stages(backend, model, kind, config, tokenizer, task, max_length, model_type, work: Path):
    """Export, optimize, quantize into work/fp32, work/optimized, work/quantized; the details and the int8
    settings, with the node counts each graph stage changed (docs/export.md)."""
    from lean.export.fusion import fusion_summary

    details = backend.export_fp32(model, kind, config, _example(tokenizer, max_length), work / "fp32") or {}
    onnx_dir = work / "fp32"
    if config.optimize or config.fp16:
        details.update(backend.optimize(onnx_dir, config, model_type, work / "optimized") or {})
        details["fusion"] = fusion_summary(_graph(onnx_dir), _graph(work / "optimized"))
        onnx_dir = work / "optimized"
    quantization = None
    if config.quantize:
        calibration = _calibration_feed(tokenizer, task, config, max_length) if config.quantize == "int8-static" else None
        quantization = backend.quantize(onnx_dir, config, calibration, work / "quantized")
        if quantization is not None:
            quantization["changed"] = fusion_summary(_graph(onnx_dir), _graph(work / "quantized"))["changed"]
    return details, quantization


def _final_stage(config: ExportConfig, work: Path) -> Path:
    if config.quantize:
        return work / "quantized"
    return work / "optimized" if config.optimize or config.fp16 else work / "fp32"


def _graph(stage: Path) -> Path:
    """A stage directory's graph: model.onnx, else its one .onnx file."""
    file = stage / "model.onnx"
    return file if file.is_file() else sorted(stage.glob("*.onnx"))[0]


def _latency_check(backend, config: ExportConfig, out: Path, work: Path, texts, max_length: int) -> dict | None:
    """Time the exported graph against its plainer form on this machine (lean.export.latency)."""
    import dataclasses

    from lean.export import latency
    from lean.runtime import load as load_onnx
    from lean.runtime import physical_cores

    plainer = latency.plainer(config)
    if plainer is None:
        return None
    label, stage = plainer
    plainer_dir = work / "fp32"
    if stage == "int8-dynamic":
        plain_config = dataclasses.replace(config, optimize=None, quantize="int8-dynamic")
        backend.quantize(work / "fp32", plain_config, None, work / "plainer")
        plainer_dir = work / "plainer"
    feed = load_onnx(out, provider="CPUExecutionProvider").encode(texts[:1], max_length=max_length, pad_to=max_length)
    return latency.check(config, out / "model.onnx", _graph(plainer_dir), label, feed, physical_cores())


def _validate(model, tokenizer, out: Path, provider: str, texts, max_length, config, kind, task) -> dict[str, Any]:
    from lean.export.validate import validate_classifier, validate_lm
    from lean.runtime import load as load_onnx

    onnx_model = load_onnx(out, provider=provider)
    if kind == "classification":
        return validate_classifier(model, tokenizer, onnx_model, texts, max_length, config, task)
    return validate_lm(model, tokenizer, onnx_model, texts, max_length, config, "test" if task else "samples")


def _manifest(out, config, kind, task, max_length, exporter, details, quantization, report, provider) -> dict[str, Any]:
    """What run() adds to lean.json: the task (or its absence), the exporter, the ONNX files and the validation."""
    from lean.export.ort_tools import opset
    from lean.models import environment

    onnx_files = sorted(p.name for p in out.iterdir() if p.suffix == ".onnx" or p.name.endswith((".onnx_data", ".onnx.data")))
    manifest = {
        "task": task.describe() if task is not None else None,
        "task_accuracy_checked": task is not None and kind == "classification",
        "kind": kind,
        "max_length": max_length,
        "exporter": exporter.describe(),
        "onnx": {**details, "opset": opset(out / "model.onnx"), "precision": config.precision,
                 "optimize": config.optimize, "quantize": config.quantize, "files": onnx_files,
                 "quantization": quantization,
                 "size_mb": round(sum((out / f).stat().st_size for f in onnx_files) / 2**20, 3)},
        "validation": report["validation"],
        "metrics": report.get("metrics", {}),
        "source_metrics": report.get("source_metrics", {}),
        "environment": environment(provider),
    }
    if task is None:
        manifest["note"] = ("no task: the ONNX model was checked against PyTorch on lean's sample texts only; "
                            "no task accuracy was checked")
    return manifest


def _validation_texts(task, kind: str, config: ExportConfig) -> list[str]:
    """The task's test texts (the first max_eval_samples), else every shipped sample text."""
    if task is not None:
        return task.test.take(config.max_eval_samples).texts
    from lean.samples import sample_texts

    return sample_texts()


def _example(tokenizer, max_length: int) -> dict:
    """A traced example for exporters that need one: two real texts of different lengths (batch and
    sequence above 1, so torch.export keeps both dimensions dynamic)."""
    from lean.samples import sample_texts

    import torch

    texts = [t for t in sample_texts() if len(t.split()) >= 8][:2]
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    n = min(len(ids) for ids in enc["input_ids"])  # cut to one length: no pad token needed (causal LMs may lack one)
    return {k: torch.tensor([row[:n] for row in v]) for k, v in enc.items()}


def _calibration_feed(tokenizer, task, config: ExportConfig, max_length: int) -> dict:
    """int8-static calibration inputs: (N, max_length) int64 arrays of train texts (sample texts without a task),
    padded to one shape so they batch."""
    from lean.samples import sample_texts

    texts = task.train.texts[:config.calibration_samples] if task is not None else sample_texts()[:config.calibration_samples]
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="np")
    return {k: v.astype("int64") for k, v in enc.items()}


def _validation_provider(config: ExportConfig) -> str:
    from lean.runtime import cuda_available

    cuda = cuda_available()
    if config.device.startswith("cuda") and not cuda:
        raise LeanError(f"device '{config.device}' was asked for but onnxruntime sees no CUDA GPU: use --device cpu")
    if config.fp16 and (config.device == "cpu" or not cuda):
        raise LeanError("--fp16 and --optimize O4 need a CUDA GPU (onnxruntime's CPU kernels are fp32 and int8): "
                        "run on a GPU machine, or use --quantize int8-dynamic for CPU")
    return "CUDAExecutionProvider" if cuda and config.device != "cpu" else "CPUExecutionProvider"
