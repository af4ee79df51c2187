"""quantize_: the in-place verb (torchao's `quantize_(model, config, filter_fn=...)`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from lean.errors import LeanError
from lean.quantize.bnb import attach_bnb_quantizer
from lean.quantize.configs import QuantConfig, check_device
from lean.quantize.handlers import check_dynamic_engine
from lean.quantize.registry import METHODS, handler_for
from lean.quantize.selection import FilterFn, conv1d_type, plan_layers


def model_device(model) -> str:
    try:
        return str(next(model.parameters()).device)
    except StopIteration:
        return "cpu"


def quantized_layers(model, config: QuantConfig, names: list[str], device: str) -> dict[str, Any]:
    """name -> quantized twin of each named layer (the model is not changed)."""
    handler = handler_for(config)
    modules = dict(model.named_modules())
    # A twin inherits its layer's train/eval mode: LLM.int8() treats outlier columns differently when training.
    return {name: handler(modules[name], config, device).train(modules[name].training) for name in names}


def install_layers(model, config: QuantConfig, layers: dict[str, Any], skipped: list[str]):
    """Swap the quantized twins into the model and record what was done on `model.lean_quantization`."""
    for name, q in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
    model.lean_quantization = {
        "method": config.method,
        "config": asdict(config),
        "quantized": list(layers),
        "skipped": list(skipped),
        "conv1d": [n for n, q in layers.items() if getattr(q, "source_cls", None) is conv1d_type()],
    }
    if config.method.startswith("bnb-") and hasattr(model, "config"):  # a transformers model: make save_pretrained work
        attach_bnb_quantizer(model, config, skipped)
    return model


def prepare(model, config: QuantConfig, device: str, filter_fn: FilterFn | None = None) -> tuple[list[str], list[str]]:
    """Every check before any layer changes: the method runs on `device`, and some layer is left to quantize."""
    check_device(config, device)
    if config.method == "dynamic-int8":
        check_dynamic_engine()
    quantized, skipped = plan_layers(model, config, filter_fn)  # a --skip that names nothing fails here
    if not quantized:
        raise LeanError("no linear layer is left to quantize: --skip (or filter_fn) covers them all")
    return quantized, skipped


def quantize_(model, config: QuantConfig, device: str | None = None, filter_fn: FilterFn | None = None):
    """Quantize `model`'s linear layers in place with `config` and return it (torchao's `quantize_`).

    The layers are quantized on the model's device (or `device`); a method that cannot run there raises.
    `filter_fn(module, name) -> bool` narrows the layers further: only those it returns True for are
    quantized (beside `config.skip`, which keeps the task head by default).
    """
    if not isinstance(config, QuantConfig):
        raise LeanError(f"quantize_ takes a method config ({', '.join(c.__name__ for c in METHODS.values())}), got {type(config).__name__}")
    if getattr(model, "lean_quantization", None) or getattr(getattr(model, "config", None), "quantization_config", None) is not None:
        raise LeanError("this model is already quantized: quantize its full-precision version instead")
    device = device or model_device(model)
    quantized, skipped = prepare(model, config, device, filter_fn)
    model.to(device)
    return install_layers(model, config, quantized_layers(model, config, quantized, device), skipped)
