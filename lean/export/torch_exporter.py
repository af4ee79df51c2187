"""The torch exporter: torch.onnx.export + onnxruntime's transformer optimizer and quantizer.

Needs torch, onnxscript and onnxruntime only, so it works where optimum-onnx cannot be installed
(transformers 5). It exports sequence classifiers of the encoder families in ENCODERS; causal LMs
with a KV cache go through optimum (see exporters.py).

The graph comes from the dynamo exporter, except where transformer fusions are asked for (O2 and
up): onnxruntime's Attention and EmbedLayerNormalization patterns match the TorchScript exporter's
graph (constant Reshape shapes, the mask as Sub/Mul/Add), not dynamo's (shapes computed through
Shape/Concat), so those levels trace with TorchScript and fall back to dynamo only where tracing fails.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from lean.errors import LeanError, first_line
from lean.export.ort_tools import has_vnni

# model_type -> the model type onnxruntime's transformer optimizer fuses it as (the BERT family shares
# its attention, SkipLayerNorm and GELU patterns). A type missing here is refused before weights load.
ENCODERS: dict[str, str] = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "distilbert": "bert", "electra": "bert",
    "camembert": "bert", "albert": "bert", "mpnet": "bert", "deberta-v2": "bert",
}
MIN_OPSET = 18  # the dynamo exporter emits opset 18 and newer
FUSING_LEVELS = ("O2", "O3", "O4")  # the levels that run onnxruntime's transformer fusions
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# onnxruntime's own defaults for x86 int8: MatMul weights (and Gather'd embeddings, dynamic only) quantized
DYNAMIC_OPS = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"]
STATIC_OPS = ["MatMul", "Gather"]


def check(model_type: str, kind: str, config) -> None:
    if kind == "lm":
        raise LeanError("the torch exporter does not export causal LMs with a KV cache: install the optimum extra "
                        "(pip install \"lean[optimum]\") and pass --exporter optimum (or auto)")
    if model_type.replace("_", "-") not in ENCODERS:
        raise LeanError(f"the torch exporter cannot export model type '{model_type}' to ONNX for text-classification; "
                        f"supported types: {', '.join(sorted(ENCODERS))} (or try --exporter optimum)")
    if config.opset is not None and config.opset < MIN_OPSET:
        raise LeanError(f"--opset {config.opset} is below {MIN_OPSET}, the lowest the torch exporter writes: "
                        f"pass --opset {MIN_OPSET} or more, or --exporter optimum")


def input_names(model, example: dict) -> list[str]:
    """The inputs both the model's forward and the tokenizer provide, in a fixed order."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return [n for n in INPUTS if n in params and n in example]


def export_fp32(model, kind: str, config, example: dict, out: Path) -> dict[str, Any]:
    """torch.onnx.export(dynamo=True) of logits, with batch and sequence dynamic; writes out/model.onnx + config."""
    import contextlib
    import io
    import warnings

    import torch

    names = input_names(model, example)

    class Logits(torch.nn.Module):  # the model's output object flattened to the one tensor served
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.inner(**{n: given[n] for n in names}).logits

    out.mkdir(parents=True, exist_ok=True)
    details = {"inputs": names, "dynamic_axes": {"batch": 0, "sequence": 1}}
    # the exporter prints its progress to stdout, which is `lean export`'s own summary
    with warnings.catch_warnings(), _quiet(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if config.optimize in FUSING_LEVELS:
            try:
                _export_torchscript(Logits(model).eval(), names, example, out / "model.onnx", config.opset)
                model.config.save_pretrained(out)
                return {**details, "graph": "torchscript"}
            except Exception as e:  # tracing fails on some models: dynamo's graph still takes the other fusions
                details["torchscript_failed"] = first_line(e, 200)
        try:
            _export_dynamo(Logits(model).eval(), model, names, example, out / "model.onnx", config.opset)
        except Exception as e:  # torch.export raises many types (TorchExportError, UserError, ...)
            raise LeanError(f"torch.onnx could not export this model: {first_line(e)} (try --exporter optimum)") from None
    model.config.save_pretrained(out)
    return {**details, "graph": "dynamo"}


def _export_dynamo(wrapper, model, names: list[str], example: dict, file: Path, opset: int | None) -> None:
    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # weights inline up to 1.5 GiB; a protobuf cannot hold more than 2 GiB
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5 * 2**30
    torch.onnx.export(wrapper, (), str(file), kwargs={n: example[n] for n in names}, dynamo=True, input_names=names,
                      output_names=["logits"], opset_version=opset, external_data=external, verbose=False,
                      dynamic_shapes={n: {0: batch, 1: sequence} for n in names})


def _export_torchscript(wrapper, names: list[str], example: dict, file: Path, opset: int | None) -> None:
    """The TorchScript exporter (dynamo=False), whose attention graph onnxruntime's fusions recognise."""
    import torch

    inner = wrapper.inner
    # eager attention: transformers 5 traces sdpa's mask as Where/Expand, which the Attention pattern does not
    # match; the model is switched back for validation. Models that cannot switch (4.57's BERT family, whose
    # sdpa graph matches as it is) are traced as they are.
    attention = getattr(inner.config, "_attn_implementation", None)
    can_switch = getattr(inner, "_can_set_attn_implementation", lambda: False)
    switch = attention not in (None, "eager") and can_switch()
    if switch:
        inner.set_attn_implementation("eager")
    try:
        torch.onnx.export(wrapper, tuple(example[n] for n in names), str(file), dynamo=False, input_names=names,
                          output_names=["logits"], opset_version=opset or MIN_OPSET,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})
    finally:
        if switch:
            inner.set_attn_implementation(attention)


def optimize(onnx_dir: Path, config, model_type: str, out: Path) -> dict[str, Any]:
    """onnxruntime.transformers.optimizer: O1 onnxruntime's basic rewrites; O2 + attention/LayerNorm/GELU
    fusions; O3 + tanh GELU approximation; O4 (and --fp16) + the fp16 cast, inputs and outputs kept fp32."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    ort_type = ENCODERS[model_type.replace("_", "-")]
    options = FusionOptions(ort_type)
    options.enable_gelu_approximation = config.optimize in ("O3", "O4")
    basic_only = config.optimize in (None, "O1")  # --fp16 alone: no transformer fusions, as with optimum
    with _quiet():
        try:
            heads, hidden = _attention_shape(onnx_dir)
            optimized = optimize_model(str(onnx_dir / "model.onnx"), model_type=ort_type, num_heads=heads, hidden_size=hidden,
                                       optimization_options=options, opt_level=1 if basic_only else 0,
                                       only_onnxruntime=basic_only, use_gpu=config.fp16)
            if config.fp16:
                optimized.convert_float_to_float16(keep_io_types=True)
        except Exception as e:  # the optimizer raises bare exceptions from its pattern matchers
            raise LeanError(f"onnxruntime could not optimize this model at {config.optimize or 'fp16'}: "
                            f"{first_line(e)}") from None
        out.mkdir(parents=True, exist_ok=True)
        optimized.save_model_to_file(str(out / "model.onnx"))
    carry_files(onnx_dir, out)
    fused = {k: v for k, v in (optimized.get_fused_operator_statistics() or {}).items() if v}
    return {"fused_operators": fused}


def _attention_shape(onnx_dir: Path) -> tuple[int, int]:
    """(num_heads, hidden_size) from the exported config.json, which the Attention fusion checks the graph against
    (0, 0: onnxruntime reads them from the graph's Reshape shapes, which a dynamo graph computes at run time)."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(onnx_dir)
    except (OSError, ValueError):
        return 0, 0
    return int(getattr(hf_config, "num_attention_heads", 0) or 0), int(getattr(hf_config, "hidden_size", 0) or 0)


def quantize(onnx_dir: Path, config, calibration_feed: dict | None, out: Path) -> dict[str, Any]:
    """onnxruntime.quantization: dynamic (QOperator, activations quantized per call) or static (QDQ, min-max ranges)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    static = config.quantize == "int8-static"
    reduce_range = config.reduce_range if config.reduce_range is not None else not has_vnni()
    # fused graphs carry contrib ops (Attention, SkipLayerNorm) whose outputs shape inference cannot type: all float
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if config.optimize else {}
    ops = STATIC_OPS if static else DYNAMIC_OPS
    out.mkdir(parents=True, exist_ok=True)
    # the dynamo exporter's value_info records traced shapes that clash with the quantizer's own shape
    # inference (the classifier's transposed weight); the quantizer infers them again without it
    graph = onnx.load(str(onnx_dir / "model.onnx"))
    del graph.graph.value_info[:]
    source, target = str(out.parent / "unquantized.onnx"), str(out / "model.onnx")
    onnx.save(graph, source)
    with _quiet():
        try:
            if static:
                quantize_static(source, target, _Calibration(calibration_feed, source), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=ops, per_channel=config.per_channel, reduce_range=reduce_range,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
            else:
                quantize_dynamic(source, target, op_types_to_quantize=ops, per_channel=config.per_channel,
                                 reduce_range=reduce_range, weight_type=QuantType.QInt8, extra_options=extra)
        except Exception as e:  # onnxruntime's quantizer raises bare exceptions
            raise LeanError(f"onnxruntime could not quantize this model ({config.quantize}): {first_line(e)}") from None
    carry_files(onnx_dir, out)
    return {"is_static": static, "format": "QDQ" if static else "QOperator", "weights_dtype": "QInt8",
            "activations_dtype": "QUInt8", "per_channel": config.per_channel, "reduce_range": reduce_range,
            "operators_to_quantize": ops}


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: one feed dict per call, batches of 8 texts, then None."""

    def __init__(self, feed: dict, model_file: str):
        from lean.export.ort_tools import session_inputs

        names = {i.name for i in session_inputs(Path(model_file))}
        feed = {k: v for k, v in feed.items() if k in names}
        n = len(next(iter(feed.values())))
        self.batches = iter([{k: v[i:i + 8] for k, v in feed.items()} for i in range(0, n, 8)])

    def get_next(self):
        return next(self.batches, None)


def carry_files(src: Path, dst: Path) -> None:
    """Copy everything but the graph (config.json ...) from one stage's directory to the next."""
    for file in src.iterdir():
        if file.is_file() and not (dst / file.name).exists() and not file.name.startswith("model.onnx"):
            shutil.copy2(file, dst / file.name)


class _quiet:
    """Silence the exporter's and quantizer's per-tensor logging (root logger) for the block."""

    def __enter__(self):
        self.root = logging.getLogger()
        self.level = self.root.level
        self.root.setLevel(max(self.level, logging.ERROR))
        self.torch_onnx = logging.getLogger("torch.onnx")
        self.torch_level = self.torch_onnx.level
        self.torch_onnx.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.root.setLevel(self.level)
        self.torch_onnx.setLevel(self.torch_level)
