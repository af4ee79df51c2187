"""The optimum-onnx exporter: optimum.exporters.onnx, ORTOptimizer, ORTQuantizer (see exporters.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lean.errors import LeanError, first_line
from lean.export.ort_tools import has_vnni, session_inputs

OPTIMUM_TASKS = {"classification": "text-classification", "lm": "text-generation-with-past"}


def check(model_type: str, kind: str, config) -> None:
    """Raise, naming what is supported, when optimum has no ONNX config for this architecture and task."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager

    task = OPTIMUM_TASKS[kind]
    supported = sorted(TasksManager.get_supported_model_type_for_task(task, exporter="onnx"))
    if model_type.replace("_", "-") not in {s.replace("_", "-") for s in supported}:
        raise LeanError(f"optimum cannot export model type '{model_type}' to ONNX for {task}; "
                        f"supported types: {', '.join(supported)}")


def export_fp32(model, kind: str, config, example, out: Path) -> dict[str, Any]:
    """optimum's exporter on the already-loaded (safetensors) model; validation is ours, on real inputs."""
    import warnings

    from optimum.exporters.onnx import onnx_export_from_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on constant shapes
        try:
            onnx_export_from_model(model, out, task=OPTIMUM_TASKS[kind], opset=config.opset, do_validation=False)
        except ValueError as e:
            raise LeanError(f"optimum cannot export this model: {first_line(e)}") from None
    return {"optimum_task": OPTIMUM_TASKS[kind]}


def optimize(onnx_dir: Path, config, model_type: str, out: Path) -> None:
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
                        f"{first_line(e)}") from None


def quantize(onnx_dir: Path, config, calibration_feed: dict | None, out: Path) -> dict[str, Any] | None:
    """ORTQuantizer: dynamic (int8 weights, activations quantized per call) or static (ranges from calibration texts)."""
    import onnx
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoCalibrationConfig, AutoQuantizationConfig

    static = config.quantize == "int8-static"
    # u8 activations x s8 weights: MLAS's fastest int8 path on x86 (measured in docs/export.md)
    reduce_range = config.reduce_range if config.reduce_range is not None else not has_vnni()
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

            names = {i.name for i in session_inputs(onnx_dir / "model.onnx")}
            calibration = datasets.Dataset.from_dict({k: v for k, v in calibration_feed.items() if k in names})
            ranges = quantizer.fit(calibration, AutoCalibrationConfig.minmax(calibration),
                                   operators_to_quantize=qconfig.operators_to_quantize, batch_size=8,
                                   onnx_augmented_model_name=str(out.parent / "augmented.onnx"))
        _quantize_with_extra(quantizer, qconfig, out, ranges, extra)
    finally:
        root.setLevel(level)
    return _read_quantization(out)


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
