"""The `lean quantize` step: load fp32, measure each layer's SQNR on calibration texts, quantize, evaluate, save.

With a task (--task, or the one in the source's lean.json) the step calibrates on its train split
and evaluates on its test split, as before. Without one it calibrates on lean's shipped sample
texts (lean.samples), reports SQNR and output error on them, and records that no task accuracy
was checked: a user's own model needs no task file to be quantized.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lean.errors import LeanError
from lean.quantize.analysis import calibration_batches, calibration_texts, layer_sqnr, output_error
from lean.quantize.bnb import silence_known_notices
from lean.quantize.configs import QuantizeStepConfig, check_device
from lean.quantize.core import install_layers, prepare, quantized_layers
from lean.quantize.serialization import DYNAMIC_WEIGHTS, quantization_of, quiet_transformers, save_quantized
from lean.quantize.sizes import weight_bytes

NO_TASK = "no task given (--task) and none in the source's lean.json"


def quantize_dir(model: str, config: QuantizeStepConfig, output: str, overwrite: bool = False) -> Path:
    """Quantize the model directory `model` with `config` into `output` (the `lean quantize` step)."""
    from lean.steps import run_step

    return run_step("quantize", model, config, output, overwrite=overwrite)


def check_source(source: str) -> str:
    """The resolved source directory, or a LeanError for a missing dir, a non-model or a quantized model."""
    from lean.models import read_manifest, resolve_model

    resolved = resolve_model(source)
    method = quantization_of(resolved) if Path(resolved).is_dir() else None
    if method is not None:
        parent = read_manifest(resolved).get("parent", {}).get("path")
        hint = f" '{parent}'" if parent else ""
        raise LeanError(f"'{source}' is already quantized ({method}): quantize its full-precision parent{hint} instead")
    return resolved


def model_kind(config) -> str:
    names = getattr(config, "architectures", None) or []
    arch = names[0] if names else ""
    if arch.endswith("ForSequenceClassification"):
        return "classification"
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "lm"
    raise LeanError(f"quantize handles sequence classifiers and causal LMs; this model's architecture is '{arch or 'unknown'}'")


@dataclass
class _Source:
    """The loaded full-precision model and what the step inherits from its parent's manifest."""

    model: Any
    tokenizer: Any
    kind: str
    device: str
    parent: dict
    max_length: int
    inherited: Any  # lean.lineage.Inherited: task, split seed, columns, max length, kind


def _load_source(source: str, config: QuantizeStepConfig) -> _Source:
    import torch

    from lean.models import align_pad_token, load_config, load_model, load_tokenizer, read_manifest, resolve_device

    qconfig = config.quantization
    resolved = check_source(source)
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and "cuda" in qconfig.devices else "cpu"
    check_device(qconfig, device)
    device = resolve_device(device)
    from lean.lineage import inherit

    parent = read_manifest(resolved)
    kind = model_kind(load_config(resolved, config.trust_remote_code))
    inherited = inherit(resolved, {"task": config.task, "split_seed": config.split_seed,
                                   "text_column": config.text_column, "label_column": config.label_column,
                                   "max_length": config.max_length})
    max_length = inherited.max_length
    tokenizer = load_tokenizer(resolved, config.trust_remote_code)
    with quiet_transformers():
        model = load_model(resolved, kind, config.trust_remote_code).eval().to(device)
    align_pad_token(model, tokenizer)
    if kind == "lm":
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", max_length)
        max_length = min(max_length, limit)
    return _Source(model, tokenizer, kind, device, parent, max_length, inherited)


def _load_task(src: _Source, config: QuantizeStepConfig) -> tuple[Any, str | None]:
    """(task, its spec) to calibrate and evaluate on (--task, else the parent's), or (None, None) when there is neither."""

    inherited = src.inherited
    if inherited.task is None:
        return None, None
    spec = inherited.task
    task = inherited.load_task()
    labels = src.model.config.num_labels
    if src.kind == "classification" and config.evaluate and labels != task.num_labels:
        raise LeanError(f"the model has {labels} labels but task '{spec}' has {task.num_labels}: "
                        "pass the task it was trained on (--task) or --no-eval")
    return task, spec


def run(source: str, config: QuantizeStepConfig, out: Path) -> dict[str, Any]:
    """The step: load fp32, measure each layer's SQNR on calibration texts, quantize, evaluate, save."""
    from lean.models import environment
    from lean.samples import sample_texts

    silence_known_notices()
    qconfig = config.quantization
    src = _load_source(source, config)
    quantized, skipped = prepare(src.model, qconfig, src.device)  # a --skip that names nothing fails before data is read
    task, spec = _load_task(src, config)
    texts = task.train.texts if task is not None else sample_texts()
    size_before = weight_bytes(src.model)
    batches = calibration_batches(src.tokenizer, texts[:config.calibration_samples], src.max_length, src.device, src.model)
    layers = quantized_layers(src.model, qconfig, quantized, src.device)
    per_layer, reference = layer_sqnr(src.model, layers, batches)
    install_layers(src.model, qconfig, layers, skipped)
    src.model.eval()
    output = output_error(src.model, batches, reference)
    size_after = weight_bytes(src.model)
    save_quantized(src.model, out)
    src.tokenizer.save_pretrained(out)

    calibration = {"task": spec, "split": "train" if task is not None else None,
                   "samples": len(calibration_texts(batches)), "max_length": src.max_length}
    if task is None:
        calibration["texts"] = "lean.samples"
    result: dict[str, Any] = {
        "quantization": {"method": qconfig.method, "config": asdict(qconfig), "device": src.device, "quantized": quantized,
                         "skipped": skipped, "calibration": calibration, "layers": per_layer, "output": output,
                         "file": DYNAMIC_WEIGHTS if qconfig.method == "dynamic-int8" else "model.safetensors"},
        "size": _sizes(size_before, size_after, out),
        "environment": environment(src.device),
    }
    result.update(_evaluate(src, task, spec, config))
    result["inherited"] = src.inherited.record()
    return result


def _sizes(before: dict, after: dict, out: Path) -> dict[str, Any]:
    return {"model_bytes_before": before["model"], "model_bytes_after": after["model"],
            "linear_bytes_before": before["linear"], "linear_bytes_after": after["linear"],
            "model_ratio": round(after["model"] / before["model"], 4),
            "linear_ratio": round(after["linear"] / before["linear"], 4),
            "file_bytes": sum(f.stat().st_size for f in Path(out).glob("*.safetensors"))}


def _evaluate(src: _Source, task, spec: str | None, config: QuantizeStepConfig) -> dict[str, Any]:
    """task, metrics, and whether task accuracy was checked (and if not, why) for the manifest."""
    if task is None:
        return {"task": None, "task_accuracy": {"checked": False, "why": NO_TASK}}
    if src.kind == "lm" and task.kind != "lm":  # an LM given a classification task: calibration texts only
        return {"task_accuracy": {"checked": False, "why": f"task '{spec}' is no language-modelling task"}}
    result: dict[str, Any] = {"task": task.describe()}
    if not config.evaluate:
        return {**result, "task_accuracy": {"checked": False, "why": "--no-eval"}}
    parent_test = (src.parent.get("metrics") or {}).get("test") or {}
    if src.kind == "lm":
        from lean.lm import perplexity

        # The parent's own window and stride, so the figures compare with its manifest.
        stride = (src.parent.get("config") or {}).get("perplexity_stride") or src.max_length // 2
        texts = task.test.texts[:config.max_eval_samples] if config.max_eval_samples else task.test.texts
        metrics = {"test": perplexity(src.model, src.tokenizer, texts, src.max_length, stride)}
        if parent_test.get("tokens") == metrics["test"]["tokens"] and "perplexity" in parent_test:
            metrics["test_perplexity_change_vs_parent"] = round(metrics["test"]["perplexity"] - parent_test["perplexity"], 4)
    else:
        from lean.metrics import classification_metrics, predict_logits

        test = task.test.take(config.max_eval_samples)
        logits = predict_logits(src.model, src.tokenizer, test.texts, src.max_length, batch_size=32)
        metrics = {"test": classification_metrics(test.labels, logits.argmax(-1).tolist(), task.label_names)}
        if parent_test.get("n") == len(test) and "accuracy" in parent_test:
            metrics["test_accuracy_change_vs_parent"] = round(metrics["test"]["accuracy"] - parent_test["accuracy"], 6)
    return {**result, "metrics": metrics, "task_accuracy": {"checked": True}}
