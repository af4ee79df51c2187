"""ONNX export through optimum-onnx, validated against PyTorch on real task inputs.

    lean export runs/teacher -o runs/teacher-onnx                      # fp32, must match to --atol
    lean export runs/teacher -o runs/teacher-int8 --quantize int8-dynamic
    lean export runs/teacher -o runs/teacher-O2 --optimize O2
    lean export runs/tiny-llama -o runs/llama-onnx                      # causal LM with KV cache

Stages: export (optimum.exporters.onnx) -> optional graph fusions (ORTOptimizer) -> optional int8
(ORTQuantizer) -> validation through `lean.runtime`, the same code that serves the model. An fp32
export must match PyTorch logits within `atol` and agree on every prediction; fp16 and int8 must
agree on at least `min_agreement` of the predictions and lose at most `max_metric_drop` points of
test accuracy and macro-F1; for a causal LM they must keep test perplexity within `max_perplexity_ratio`
of PyTorch's (next-token argmax over a few prompts is recorded, not gated: it flips wherever two tokens
are nearly tied). A failed gate raises, and run_step leaves nothing behind.
Tests: tests/test_export.py.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lean.errors import LeanError

OPTIMIZE_LEVELS = ("O1", "O2", "O3", "O4")
QUANTIZE_METHODS = ("int8-dynamic", "int8-static")
OPTIMUM_TASKS = {"classification": "text-classification", "lm": "text-generation-with-past"}


@dataclass
class ExportConfig:
    task: str | None = None  # None: the task in the source's lean.json (lean.lineage)
    text_column: str | None = None
    label_column: str | None = None
    opset: int | None = None  # None: optimum's default for the architecture
    optimize: str | None = None  # O1..O4 (ORTOptimizer); O3 adds the tanh gelu approximation, O4 also fp16
    fp16: bool = False  # CUDA only: onnxruntime's CPU kernels are fp32 and int8
    quantize: str | None = None  # int8-dynamic | int8-static
    calibration_samples: int = 128  # train-split texts for int8-static ranges
    # per-channel weight scales keep MiniLM-sized layers accurate at no latency cost
    per_channel: bool = True
    # None: 7-bit weights on CPUs without VNNI, where u8*s8 products can saturate (VPMADDUBSW);
    # full 8 bits where VNNI is there
    reduce_range: bool | None = None
    atol: float = 1e-4  # fp32 gate on max |logits(onnx) - logits(pytorch)|
    min_agreement: float = 0.98  # fp16/int8 gate: share of test predictions equal to PyTorch's
    max_metric_drop: float = 1.0  # fp16/int8 gate: points of accuracy / macro-F1 below the source
    max_perplexity_ratio: float = 1.05  # fp16/int8 gate for causal LMs: test perplexity over PyTorch's
    max_length: int | None = None  # None: the source's training max_length, else 128
    device: str = "auto"  # where the ONNX model is validated: auto, cpu or cuda
    split_seed: int | None = None  # None: the source's split seed (lean.lineage), else 42
    max_eval_samples: int | None = None  # validate on the first N test texts only (quick runs, tests)
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.optimize is not None:
            self.optimize = str(self.optimize).upper()
            if self.optimize not in OPTIMIZE_LEVELS:
                raise LeanError(f"--optimize must be one of {', '.join(OPTIMIZE_LEVELS)}, got '{self.optimize}'")
        if self.quantize is not None and self.quantize not in QUANTIZE_METHODS:
            raise LeanError(f"--quantize must be one of {', '.join(QUANTIZE_METHODS)}, got '{self.quantize}'")
        if self.optimize == "O4":
            self.fp16 = True
        if self.fp16 and self.quantize:
            raise LeanError("--fp16 (or --optimize O4) and --quantize do not combine: choose one precision")
        if self.optimize and self.quantize == "int8-static":
            raise LeanError("--optimize and --quantize int8-static do not combine (calibration cannot type the fused "
                            "graph); drop --optimize: onnxruntime fuses the quantized graph when it loads it")
        if self.calibration_samples < 1:
            raise LeanError(f"--calibration-samples must be at least 1, got {self.calibration_samples}")
        if not self.atol > 0:
            raise LeanError(f"--atol must be positive, got {self.atol}")
        if not 0 <= self.min_agreement <= 1:
            raise LeanError(f"min_agreement must be between 0 and 1, got {self.min_agreement}")
        if not self.max_perplexity_ratio >= 1:
            raise LeanError(f"max_perplexity_ratio must be at least 1, got {self.max_perplexity_ratio}")
        if self.max_metric_drop < 0:
            raise LeanError(f"max_metric_drop must be at least 0 points, got {self.max_metric_drop}")
        if self.max_length is not None and not 8 <= self.max_length <= 8192:
            raise LeanError(f"--max-length must be between 8 and 8192, got {self.max_length}")
        if self.opset is not None and not 11 <= self.opset <= 23:
            raise LeanError(f"--opset must be between 11 and 23, got {self.opset}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise LeanError(f"unknown device '{self.device}': use auto, cpu or cuda")

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else ("int8" if self.quantize else "fp32")


def export(model: str, config: ExportConfig, output: str, overwrite: bool = False) -> Path:
    """Export `model` (a PyTorch model directory) to a validated ONNX directory at `output`."""
    from lean.steps import run_step

    check_source(model)
    _validation_provider(config)  # a missing GPU is reported before any model is loaded
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


def check_exportable(model_type: str, kind: str) -> None:
    """Raise, naming what is supported, when optimum has no ONNX config for this architecture and task."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager

    task = OPTIMUM_TASKS[kind]
    supported = sorted(TasksManager.get_supported_model_type_for_task(task, exporter="onnx"))
    if model_type.replace("_", "-") not in {s.replace("_", "-") for s in supported}:
        raise LeanError(f"optimum cannot export model type '{model_type}' to ONNX for {task}; "
                        f"supported types: {', '.join(supported)}")


def run(source: str, config: ExportConfig, out: Path) -> dict[str, Any]:
    """The step: export, optimize, quantize, validate; leaves model.onnx + config + tokenizer in `out`."""
    from lean.models import environment, load_config, load_model, load_tokenizer

    path = check_source(source)
    validate_on = _validation_provider(config)
    hf_config = load_config(source, config.trust_remote_code)
    kind = model_kind(hf_config, source)
    check_exportable(hf_config.model_type, kind)
    if config.quantize == "int8-static" and kind == "lm":
        raise LeanError("--quantize int8-static supports classifiers; for causal LMs use --quantize int8-dynamic")

    from lean.lineage import inherit

    inherited = inherit(path, {"task": config.task, "split_seed": config.split_seed, "text_column": config.text_column,
                               "label_column": config.label_column, "max_length": config.max_length},
                        defaults={"task": "bbc-news"})  # until export validates without a task
    task_spec, max_length = inherited.task, inherited.max_length
    task = inherited.load_task()

    tokenizer = load_tokenizer(source, config.trust_remote_code)
    if not getattr(tokenizer, "is_fast", False):
        raise LeanError(f"'{source}' has no fast tokenizer (tokenizer.json), which lean.runtime needs: "
                        "save it with a transformers fast tokenizer")
    model = load_model(source, kind, config.trust_remote_code).eval()
    if kind == "classification" and model.config.num_labels != task.num_labels:
        raise LeanError(f"'{source}' has {model.config.num_labels} labels but task '{task_spec}' has {task.num_labels}: "
                        "pass the --task the model was trained on")

    work = out / "_work"
    onnx_dir = _export_fp32(model, kind, config, work / "fp32")
    if config.optimize or config.fp16:
        onnx_dir = _optimize(onnx_dir, config, hf_config.model_type, work / "optimized")
    if config.quantize:
        onnx_dir = _quantize(onnx_dir, config, tokenizer, task, max_length, work / "quantized")
    for file in onnx_dir.iterdir():  # the final stage's files, with the graph named model.onnx
        name = "model.onnx" if file.suffix == ".onnx" else file.name
        shutil.move(str(file), out / name)
    tokenizer.save_pretrained(out)  # with the pad token lean set, so runtime pads like PyTorch did
    shutil.rmtree(work)

    # The manifest is read by lean.runtime for max_length; write a provisional one for validation.
    from lean.models import write_manifest

    write_manifest(out, {"max_length": max_length, "kind": kind})
    from lean.runtime import load as load_onnx

    onnx_model = load_onnx(out, provider=validate_on)
    if kind == "classification":
        report = _validate_classifier(model, tokenizer, onnx_model, task, max_length, config)
    else:
        report = _validate_lm(model, tokenizer, onnx_model, task, max_length, config)
    _gate(report, config, kind)
    onnx_files = sorted(p.name for p in out.iterdir() if p.suffix == ".onnx" or p.name.endswith(".onnx_data"))
    return {
        "task": task.describe(),
        "inherited": inherited.record(),
        "kind": kind,
        "max_length": max_length,
        "onnx": {"optimum_task": OPTIMUM_TASKS[kind], "opset": _opset(out / "model.onnx"), "precision": config.precision,
                 "optimize": config.optimize, "quantize": config.quantize, "files": onnx_files,
                 "quantization": _read_quantization(out) if config.quantize else None,
                 "size_mb": round(sum((out / f).stat().st_size for f in onnx_files) / 2**20, 3)},
        "validation": report["validation"],
        "metrics": report.get("metrics", {}),
        "source_metrics": report.get("source_metrics", {}),
        "environment": environment(validate_on),
    }


# ---- stages ---------------------------------------------------------------------------------------

def _validation_provider(config: ExportConfig) -> str:
    from lean.runtime import cuda_available

    cuda = cuda_available()
    if config.device.startswith("cuda") and not cuda:
        raise LeanError(f"device '{config.device}' was asked for but onnxruntime sees no CUDA GPU: use --device cpu")
    if config.fp16 and (config.device == "cpu" or not cuda):
        raise LeanError("--fp16 and --optimize O4 need a CUDA GPU (onnxruntime's CPU kernels are fp32 and int8): "
                        "run on a GPU machine, or use --quantize int8-dynamic for CPU")
    return "CUDAExecutionProvider" if cuda and config.device != "cpu" else "CPUExecutionProvider"


def _export_fp32(model, kind: str, config: ExportConfig, out: Path) -> Path:
    """optimum's exporter on the already-loaded (safetensors) model; validation is ours, on real inputs."""
    import warnings

    from optimum.exporters.onnx import onnx_export_from_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on constant shapes
        try:
            onnx_export_from_model(model, out, task=OPTIMUM_TASKS[kind], opset=config.opset, do_validation=False)
        except ValueError as e:
            raise LeanError(f"optimum cannot export this model: {str(e).strip().splitlines()[0]}") from None
    return out


def _optimize(onnx_dir: Path, config: ExportConfig, model_type: str, out: Path) -> Path:
    """ORTOptimizer fusions (attention, LayerNorm, GELU ...) for the architecture; O4/--fp16 also casts to fp16."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig, OptimizationConfig
    from optimum.onnxruntime.utils import ORTConfigManager

    if model_type not in ORTConfigManager._conf:
        raise LeanError(f"onnxruntime has no graph fusions for model type '{model_type}'; "
                        f"--optimize supports: {', '.join(sorted(ORTConfigManager._conf))}")
    on_gpu = config.fp16
    if config.optimize:
        opt_config = AutoOptimizationConfig.with_optimization_level(config.optimize, for_gpu=on_gpu)
    else:  # --fp16 alone: only onnxruntime's generic fusions, then the fp16 cast
        opt_config = OptimizationConfig(optimization_level=1, enable_transformers_specific_optimizations=False,
                                        optimize_for_gpu=True, fp16=True)
    opt_config.fp16 = config.fp16
    try:
        ORTOptimizer.from_pretrained(onnx_dir).optimize(opt_config, out, file_suffix=None)
    except (NotImplementedError, KeyError, RuntimeError) as e:
        raise LeanError(f"onnxruntime could not optimize this model at {config.optimize or 'fp16'}: "
                        f"{str(e).strip().splitlines()[0]}") from None
    return out


def _quantize(onnx_dir: Path, config: ExportConfig, tokenizer, task, max_length: int, out: Path) -> Path:
    """ORTQuantizer: dynamic (int8 weights, activations quantized per call) or static (ranges from train texts)."""
    import logging

    import onnx
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

    static = config.quantize == "int8-static"
    # u8 activations x s8 weights: MLAS's fastest int8 path on x86 (on a 2-core AVX2 EPYC, bbc-news MiniLM at
    # 128 tokens: ~0.50x of PyTorch eager vs ~0.63x with u8 weights, same accuracy with reduce_range)
    reduce_range = config.reduce_range if config.reduce_range is not None else not _has_vnni()
    qconfig = AutoQuantizationConfig.avx512(is_static=static, per_channel=config.per_channel,
                                            reduce_range=reduce_range)
    # fused graphs carry contrib ops (Attention, SkipLayerNorm) whose outputs shape inference cannot type: all float
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if config.optimize else {}
    quantizer = ORTQuantizer.from_pretrained(onnx_dir)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # onnxruntime's quantizer warns once per tensor on the root logger
    try:
        ranges = None
        if static:
            import datasets

            # (calibration_samples, max_length) int64 inputs, padded to one shape so they batch
            enc = tokenizer(task.train.texts[:config.calibration_samples], truncation=True, max_length=max_length,
                            padding="max_length")
            names = {i.name for i in _session_inputs(onnx_dir / "model.onnx")}
            calibration = datasets.Dataset.from_dict({k: v for k, v in enc.items() if k in names})
            ranges = quantizer.fit(calibration, AutoCalibrationConfig.minmax(calibration),
                                   operators_to_quantize=qconfig.operators_to_quantize, batch_size=8,
                                   onnx_augmented_model_name=str(out.parent / "augmented.onnx"))
        _quantize_with_extra(quantizer, qconfig, out, ranges, extra)
    finally:
        root.setLevel(level)
    return out


def _has_vnni() -> bool:
    """VNNI (AVX512-VNNI or AVX-VNNI) multiplies u8 x s8 without the 16-bit intermediate that can saturate."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _quantize_with_extra(quantizer, qconfig, out: Path, ranges, extra: dict) -> None:
    """ORTQuantizer.quantize, adding onnxruntime quantizer extra_options that optimum does not expose."""
    import optimum.onnxruntime.quantization as ort_quantization

    saved = ort_quantization.ONNXQuantizer, ort_quantization.QDQQuantizer

    def with_extra(factory):
        def make(**kwargs):
            return factory(**{**kwargs, "extra_options": {**(kwargs.get("extra_options") or {}), **extra}})
        return make

    # optimum picks its quantizer class from these module names at call time
    ort_quantization.ONNXQuantizer, ort_quantization.QDQQuantizer = (with_extra(f) for f in saved)
    try:
        quantizer.quantize(qconfig, out, file_suffix=None, calibration_tensors_range=ranges)
    finally:
        ort_quantization.ONNXQuantizer, ort_quantization.QDQQuantizer = saved


def _read_quantization(out: Path) -> dict[str, Any] | None:
    """The ORTQuantizer settings (weight/activation types, per-channel, reduce_range, operators) from ort_config.json."""
    import json

    file = out / "ort_config.json"
    if not file.is_file():
        return None
    q = json.loads(file.read_text()).get("quantization") or {}
    keys = ("is_static", "format", "weights_dtype", "activations_dtype", "per_channel", "reduce_range", "operators_to_quantize")
    return {k: q.get(k) for k in keys}


def _session_inputs(file: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"]).get_inputs()


def _opset(file: Path) -> int | None:
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


# ---- validation -----------------------------------------------------------------------------------

def _short(text: str, words: int = 6) -> str:
    return " ".join(text.split()[:words])


def _validate_classifier(model, tokenizer, onnx_model, task, max_length: int, config: ExportConfig) -> dict[str, Any]:
    """Logits on identical feeds (several batch sizes and lengths, short texts padded), then the full test split."""
    import numpy as np
    import torch

    from lean.metrics import classification_metrics, predict_logits

    test = task.test.take(config.max_eval_samples)
    cases, max_diff, token_mismatch = [], 0.0, 0
    for batch, length in ((1, max_length), (4, 32), (8, max_length), (16, 16)):
        texts = [t if i % 2 == 0 else _short(t) for i, t in enumerate(test.texts[:batch])]  # every other one padded
        feed = onnx_model.encode(texts, max_length=length)
        hf_ids = tokenizer(texts, truncation=True, max_length=length, padding=True)["input_ids"]
        token_mismatch += int(hf_ids != feed["input_ids"].tolist())
        with torch.inference_mode():
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()
        diff = float(np.abs(onnx_model.run(feed) - ref).max())
        max_diff = max(max_diff, diff)
        cases.append({"batch_size": len(texts), "max_length": length, "padded": bool((feed["attention_mask"] == 0).any()),
                      "max_abs_diff": diff})

    with torch.inference_mode():
        ref_logits = predict_logits(model, tokenizer, test.texts, max_length, batch_size=32).numpy()
    onnx_logits = onnx_model.logits(test.texts, batch_size=32, max_length=max_length)
    split_diff = float(np.abs(onnx_logits - ref_logits).max())
    ref_pred, onnx_pred = ref_logits.argmax(-1), onnx_logits.argmax(-1)
    remap = _label_remap(model.config, task.label_names)
    labels = task.label_names
    metrics = classification_metrics(test.labels, [remap[i] for i in onnx_pred], labels)
    source = classification_metrics(test.labels, [remap[i] for i in ref_pred], labels)
    return {
        "validation": {
            "max_abs_diff": max(max_diff, split_diff),
            "agreement": round(float((ref_pred == onnx_pred).mean()), 6),
            "disagreements": int((ref_pred != onnx_pred).sum()),
            "n": len(test),
            "tokenizer_mismatches": token_mismatch,
            "cases": cases + [{"batch_size": 32, "max_length": max_length, "split": "test", "n": len(test),
                               "max_abs_diff": split_diff}],
            "provider": onnx_model.provider,
            "threads": onnx_model.threads,
            "atol": config.atol,
        },
        "metrics": {"test": metrics},
        "source_metrics": {"test": source},
    }


def _label_remap(hf_config, label_names: list[str]) -> list[int]:
    """Model output index -> task label index: by name when the model names the task's labels, else identity."""
    id2label = {int(k): v for k, v in (hf_config.id2label or {}).items()}
    names = [id2label.get(i) for i in range(hf_config.num_labels)]
    if set(names) == set(label_names):
        return [label_names.index(n) for n in names]
    return list(range(hf_config.num_labels))


def _validate_lm(model, tokenizer, onnx_model, task, max_length: int, config: ExportConfig) -> dict[str, Any]:
    """Logits on left-padded prompts (first step, empty cache), greedy generations with the cache vs
    `generate`, and sliding-window perplexity of the test split's first tokens in both runtimes."""
    import numpy as np
    import torch

    from lean.lm import onnx_perplexity, perplexity, token_stream

    n_prompts = min(8, len(task.test.texts)) if config.max_eval_samples is None else min(8, config.max_eval_samples)
    prompts = [_short(t, 4 + 3 * (i % 4)) for i, t in enumerate(task.test.texts[:n_prompts])]  # 4..13 words
    cases, max_diff, agree, total = [], 0.0, 0, 0
    for batch in (1, 4):
        feed = onnx_model.encode(prompts[:batch], max_length=64, padding_side="left")
        mask = feed["attention_mask"]
        positions = np.cumsum(mask, axis=1) - 1
        positions[mask == 0] = 1
        with torch.inference_mode():
            ref = model(input_ids=torch.from_numpy(feed["input_ids"]), attention_mask=torch.from_numpy(mask),
                        position_ids=torch.from_numpy(positions)).logits.float().numpy()
        got = onnx_model.run(feed)
        real = mask.astype(bool)  # compare where tokens are real: padded positions are never read
        diff = float(np.abs(got[real] - ref[real]).max())
        max_diff = max(max_diff, diff)
        agree += int((got[real].argmax(-1) == ref[real].argmax(-1)).sum())
        total += int(real.sum())
        cases.append({"batch_size": batch, "tokens": int(mask.shape[1]), "padded": bool((mask == 0).any()), "max_abs_diff": diff})

    new_tokens = 16
    enc = onnx_model.encode(prompts, max_length=64, padding_side="left")
    with torch.inference_mode():
        out = model.generate(input_ids=torch.from_numpy(enc["input_ids"]), attention_mask=torch.from_numpy(enc["attention_mask"]),
                             max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=model.config.eos_token_id)
    eos = onnx_model.eos_id
    reference = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        reference.append(row[:row.index(eos)] if eos is not None and eos in row else row)
    generated = onnx_model.generate_ids(prompts, max_new_tokens=new_tokens, batch_size=len(prompts))
    same = [a == b for a, b in zip(generated, reference)]

    # 4k tokens in windows of the trained context moved by half of it: ~64 windows, seconds on a CPU
    texts = task.test.take(config.max_eval_samples).texts
    max_tokens = 4096 if config.max_eval_samples is None else 512
    window = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
    ref_ppl = perplexity(model, tokenizer, texts, window=window, stride=max(1, window // 2), max_tokens=max_tokens,
                         batch_size=8)
    onnx_ppl = onnx_perplexity(onnx_model, token_stream(tokenizer, texts, max_tokens), window, max(1, window // 2), 8)
    return {
        "validation": {
            "perplexity": {"pytorch": ref_ppl["perplexity"], "onnx": onnx_ppl["perplexity"],
                           "ratio": round(onnx_ppl["perplexity"] / ref_ppl["perplexity"], 6),
                           "tokens": ref_ppl["tokens"], "window": window, "split": "test"},
            "max_abs_diff": max_diff,
            "agreement": round(agree / max(total, 1), 6),  # next-token argmax on every real prompt position
            "disagreements": total - agree,
            "n": total,
            "generation_agreement": round(sum(same) / len(same), 6),
            "generation": {"prompts": len(prompts), "max_new_tokens": new_tokens, "identical": int(sum(same))},
            "cases": cases,
            "provider": onnx_model.provider,
            "threads": onnx_model.threads,
            "atol": config.atol,
        },
    }


def _gate(report: dict[str, Any], config: ExportConfig, kind: str) -> None:
    """Raise (so nothing is written) when the export is not faithful enough; the message says by how much."""
    v = report["validation"]
    if v.get("tokenizer_mismatches"):
        raise LeanError(f"export failed validation: the exported tokenizer.json encodes {v['tokenizer_mismatches']} "
                        "validation batches differently from the model's transformers tokenizer")
    if config.precision == "fp32":
        problems = []
        if v["max_abs_diff"] > config.atol:
            problems.append(f"logits differ from PyTorch by up to {v['max_abs_diff']:.2e} (atol {config.atol:g})")
        if v["disagreements"]:
            problems.append(f"{v['disagreements']} of {v['n']} predictions disagree")
        if kind == "lm" and v["generation_agreement"] < 1:
            g = v["generation"]
            problems.append(f"{g['prompts'] - g['identical']} of {g['prompts']} greedy generations differ from generate()")
        if problems:
            hint = " (--optimize O3 approximates GELU: use O2 for exact fp32)" if config.optimize == "O3" else ""
            raise LeanError(f"export failed validation: {'; '.join(problems)}{hint}; raise --atol only if that is acceptable")
        return
    problems = []
    if kind == "lm":
        ppl = v["perplexity"]
        if ppl["ratio"] > config.max_perplexity_ratio:
            problems.append(f"{config.precision} test perplexity {ppl['onnx']:.3f} is {ppl['ratio']:.3f}x PyTorch's "
                            f"{ppl['pytorch']:.3f} (at most {config.max_perplexity_ratio:g}x allowed)")
    elif v["agreement"] < config.min_agreement:
        problems.append(f"{config.precision} agrees with PyTorch on {v['agreement']:.2%} of predictions "
                        f"(at least {config.min_agreement:.0%} required)")
    if kind == "classification":
        ours, source = report["metrics"]["test"], report["source_metrics"]["test"]
        for key in ("accuracy", "macro_f1"):
            drop = 100 * (source[key] - ours[key])
            if drop > config.max_metric_drop:
                problems.append(f"test {key} {100 * ours[key]:.2f} is {drop:.2f} points below the source's "
                                f"{100 * source[key]:.2f} (at most {config.max_metric_drop:g} allowed)")
    if problems:
        raise LeanError(f"export failed validation: {'; '.join(problems)}")
