"""Handlers: one full-precision Linear/Conv1D layer -> its quantized twin, one per method config."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

from lean.errors import LeanError
from lean.quantize.bnb import import_bitsandbytes, use_generic_bnb_cpu_kernel
from lean.quantize.configs import Bnb4BitConfig, BnbFP4Config, BnbInt8Config, BnbNF4Config, DynamicInt8Config
from lean.quantize.registry import register_handler
from lean.quantize.selection import linear_weight


@register_handler(BnbInt8Config)
def bnb_int8(layer, config: BnbInt8Config, device: str):
    import torch

    bnb = import_bitsandbytes()
    weight, bias = linear_weight(layer)
    out_features, in_features = weight.shape
    q = bnb.nn.Linear8bitLt(in_features, out_features, bias is not None, has_fp16_weights=False,
                            threshold=config.threshold, device="meta")
    # Int8Params quantizes (row-wise absmax -> int8 + SCB scales) when moved off the CPU copy: .to(device) does it.
    q.weight = bnb.nn.Int8Params(weight.float().cpu(), requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        q.bias = torch.nn.Parameter(bias.float().cpu(), requires_grad=False)
    q.source_cls = type(layer)  # transformers reads this when it loads the saved directory
    return q.to(device)


@register_handler(BnbNF4Config)
@register_handler(BnbFP4Config)
def bnb_4bit(layer, config: Bnb4BitConfig, device: str):
    import torch

    bnb = import_bitsandbytes()
    weight, bias = linear_weight(layer)
    out_features, in_features = weight.shape
    q = bnb.nn.Linear4bit(in_features, out_features, bias is not None, compute_dtype=getattr(torch, config.compute_dtype),
                          compress_statistics=config.double_quant, quant_type=config.quant_type, device="meta")
    # Packed two weights per byte: (out*in/2, 1) uint8 once moved to the device.
    q.weight = bnb.nn.Params4bit(weight.float().cpu(), requires_grad=False, blocksize=config.blocksize,
                                 compress_statistics=config.double_quant, quant_type=config.quant_type, module=q)
    if bias is not None:
        q.bias = torch.nn.Parameter(bias.float().cpu(), requires_grad=False)
    q.source_cls = type(layer)
    use_generic_bnb_cpu_kernel(q)
    return q.to(device)


@contextlib.contextmanager
def quiet_torch_ao():
    """torch 2.13 warns that quantized tensors are deprecated (torchao is the successor); docs/quantize.md says so once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        yield


def check_dynamic_engine() -> None:
    import torch

    if not torch.backends.quantized.supported_engines or torch.backends.quantized.supported_engines == ["none"]:
        raise LeanError("dynamic-int8 needs a PyTorch build with a quantized engine (fbgemm, x86 or qnnpack); this one has none")


@register_handler(DynamicInt8Config)
def dynamic_int8(layer, config: DynamicInt8Config, device: str):
    import torch
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    weight, bias = linear_weight(layer)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device="meta")
    linear.weight = torch.nn.Parameter(weight.float().cpu(), requires_grad=False)
    if bias is not None:
        linear.bias = torch.nn.Parameter(bias.float().cpu(), requires_grad=False)
    # Weight scales come from the weight's own min/max: the result is deterministic.
    linear.qconfig = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
    with quiet_torch_ao():
        q = nnqd.Linear.from_float(linear)
    q.source_cls = type(layer)
    return q


def dynamic_layer_tensors(module) -> dict[str, Any]:
    """A dynamic int8 layer as plain tensors: int8 weight (out, in), float32 scales and int32 zero
    points (per row or one), float32 bias. What is saved, and what its size counts."""
    import torch

    qweight = module.weight()
    if qweight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scale, zero_point = qweight.q_per_channel_scales().float(), qweight.q_per_channel_zero_points().int()
    else:
        scale, zero_point = torch.tensor([qweight.q_scale()], dtype=torch.float32), torch.tensor([qweight.q_zero_point()], dtype=torch.int32)
    out = {"weight": qweight.int_repr().contiguous(), "weight_scale": scale.contiguous(), "weight_zero_point": zero_point.contiguous()}
    bias = module.bias()
    if bias is not None:
        out["bias"] = bias.detach().float().contiguous()
    return out
