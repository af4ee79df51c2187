"""Saving and loading quantized models, safetensors only.

bitsandbytes methods save with `save_pretrained` (quantization_config in config.json), so plain
`from_pretrained` loads them; dynamic-int8 saves int8 weights with their scales in
`model-dynamic-int8.safetensors` and `load_quantized` rebuilds the quantized layers. Either way the
method config is stored as it was given (in `quantization.json` for bitsandbytes, in the safetensors
metadata for dynamic-int8) and `saved_config` / `load_quantized` give it back unchanged.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from lean.errors import LeanError, first_line
from lean.quantize.bnb import import_bitsandbytes, silence_known_notices, use_generic_bnb_cpu_kernel
from lean.quantize.configs import QuantConfig, check_device, method_config_from_dict
from lean.quantize.handlers import check_dynamic_engine, dynamic_layer_tensors, quiet_torch_ao
from lean.quantize.registry import METHODS

DYNAMIC_WEIGHTS = "model-dynamic-int8.safetensors"
QUANTIZATION_FILE = "quantization.json"  # lean's record beside a bitsandbytes directory: the config as given


@contextlib.contextmanager
def quiet_transformers():
    """transformers' notes and progress bars off for the block (5.x draws "Loading weights" and "Writing
    model shards" bars on stderr), restored after: lean prints its own one-line summary."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def save_quantized(model, out: str | Path) -> Path:
    """Write a model that `quantize_` changed into `out` (weights + config; the caller saves the tokenizer)."""
    info = getattr(model, "lean_quantization", None)
    if not info:
        raise LeanError("this model was not quantized by lean.quantize: call quantize_(model, config) first")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if info["method"].startswith("bnb-"):
        with quiet_transformers():
            model.save_pretrained(out, safe_serialization=True)
        (out / QUANTIZATION_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return out
    from safetensors.torch import save_file

    quantized = set(info["quantized"])
    tensors, tied, by_ptr = {}, {}, {}
    for name, tensor in model.state_dict().items():
        if name.rpartition(".")[0] in quantized or "._packed_params" in name:
            continue  # quantized layers are written below in a plain-tensor form
        if tensor.data_ptr() in by_ptr:  # tied weights are stored once and re-tied at load
            tied[name] = by_ptr[tensor.data_ptr()]
            continue
        by_ptr[tensor.data_ptr()] = name
        tensors[name] = tensor.detach().contiguous()
    modules = dict(model.named_modules())
    for name in info["quantized"]:
        for key, value in dynamic_layer_tensors(modules[name]).items():
            tensors[f"{name}.{key}"] = value
    metadata = {"format": "pt", "lean_quantization": json.dumps({**info, "tied": tied})}
    save_file(tensors, str(out / DYNAMIC_WEIGHTS), metadata=metadata)
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out)
    return out


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def saved_info(path: str | Path) -> dict[str, Any] | None:
    """What save_quantized recorded (method, config, quantized, skipped), or None where it recorded nothing."""
    path = Path(path)
    if (path / DYNAMIC_WEIGHTS).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path / DYNAMIC_WEIGHTS), "pt") as f:
                return json.loads((f.metadata() or {})["lean_quantization"])
        except Exception as e:  # safetensors raises its own error types for a truncated file
            raise LeanError(f"'{path / DYNAMIC_WEIGHTS}' is not a readable lean quantized file: {first_line(e)}") from None
    return _read_json(path / QUANTIZATION_FILE) or None


def quantization_of(path: str | Path) -> str | None:
    """The method a directory was quantized with ('bnb-nf4', 'dynamic-int8', ...), or None for full precision."""
    path = Path(path)
    if (path / DYNAMIC_WEIGHTS).is_file():
        return "dynamic-int8"
    qc = _read_json(path / "config.json").get("quantization_config")
    if isinstance(qc, dict) and qc:
        if qc.get("quant_method") == "bitsandbytes":
            return "bnb-int8" if qc.get("load_in_8bit") else f"bnb-{qc.get('bnb_4bit_quant_type', 'fp4')}"
        return str(qc.get("quant_method", "unknown"))
    from lean.models import read_manifest

    manifest = read_manifest(path)
    if manifest.get("step") == "quantize":
        return manifest.get("quantization", {}).get("method", "unknown")
    return None


def saved_config(path: str | Path) -> QuantConfig:
    """The method config a directory was quantized with, as it was given (skip list, version and all)."""
    method = quantization_of(path)
    if method is None:
        raise LeanError(f"'{path}' is not a quantized model directory (no quantization_config, no {DYNAMIC_WEIGHTS})")
    if method not in METHODS:
        raise LeanError(f"'{path}' is quantized with '{method}', which lean.quantize does not load")
    info = saved_info(path)
    if info is None:  # written by plain transformers or an older lean: the lean manifest, else config.json's values
        from lean.models import read_manifest

        info = read_manifest(path).get("quantization") or {}
    if isinstance(info.get("config"), dict):
        return method_config_from_dict(info["config"])
    return _config_from_bnb(method, _read_json(Path(path) / "config.json").get("quantization_config", {}))


def _config_from_bnb(method: str, qc: dict) -> QuantConfig:
    if method == "bnb-int8":
        return METHODS[method](threshold=qc.get("llm_int8_threshold", 6.0))
    dtype = str(qc.get("bnb_4bit_compute_dtype", "float32")).replace("torch.", "")
    return METHODS[method](double_quant=bool(qc.get("bnb_4bit_use_double_quant", True)), compute_dtype=dtype)


def _architecture_class(config, path):
    import transformers

    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise LeanError(f"'{path}' names no architecture transformers knows ({names or 'none'}) in config.json")
    return cls


def load_quantized(path: str | Path, device: str = "cpu"):
    """Load any directory `lean quantize` (or save_quantized) wrote, on `device`, ready for inference.
    `model.lean_quantization["config"]` is the method config as saved."""
    from dataclasses import asdict

    from lean.models import load_config, resolve_device

    config = saved_config(path)
    check_device(config, device)
    device = resolve_device(device)
    silence_known_notices()
    hf_config = load_config(str(path))
    if config.method == "dynamic-int8":
        model = _load_dynamic(path, hf_config)
    else:
        model = _load_bnb(path, hf_config, device)
    info = saved_info(path) or {"method": config.method}
    model.lean_quantization = {**{k: v for k, v in info.items() if k != "tied"}, "config": asdict(config)}
    return model.eval()


def _load_bnb(path, config, device):
    import torch

    import_bitsandbytes()
    cls = _architecture_class(config, path)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
    try:
        with quiet_transformers():  # device-map notes and progress bars are noise here
            # dtype: the layers left in full precision keep their saved dtype (bitsandbytes would default them to fp16).
            model = cls.from_pretrained(str(path), device_map=device, dtype=dtype, use_safetensors=True)
        use_generic_bnb_cpu_kernel(model)
        return model
    except (OSError, ValueError) as e:
        raise LeanError(f"cannot load the quantized model '{path}': {first_line(e)}") from None


def _no_init_weights():
    """transformers' context that skips random init (moved to transformers.initialization in 5.x)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def _dynamic_layer(weight, scale, zero_point, bias, per_channel: bool):
    """(out, in) int8 + scales -> a dynamic quantized Linear."""
    import torch
    import torch.ao.nn.quantized.dynamic as nnqd

    with quiet_torch_ao():
        if scale.numel() == weight.shape[0] and per_channel:
            qweight = torch._make_per_channel_quantized_tensor(weight, scale.double(), zero_point.long(), 0)
        else:
            qweight = torch._make_per_tensor_quantized_tensor(weight, float(scale[0]), int(zero_point[0]))
        layer = nnqd.Linear(weight.shape[1], weight.shape[0], bias_=bias is not None, dtype=torch.qint8)
        layer.set_weight_bias(qweight, bias)
    return layer


def _load_dynamic(path, config):
    from safetensors.torch import load_file

    check_dynamic_engine()
    info = saved_info(path)
    tensors = load_file(str(Path(path) / DYNAMIC_WEIGHTS))
    with _no_init_weights():  # every weight is overwritten below; skip the random init
        model = _architecture_class(config, path)(config)
    model.eval()
    per_channel = info["config"].get("per_channel", True)
    layers = {name: _dynamic_layer(tensors.pop(f"{name}.weight"), tensors.pop(f"{name}.weight_scale"),
                                   tensors.pop(f"{name}.weight_zero_point"), tensors.pop(f"{name}.bias", None), per_channel)
              for name in info["quantized"]}
    for name, target in info.get("tied", {}).items():
        tensors[name] = tensors[target]
    # Full-precision tensors go into the fp32 skeleton first; the quantized layers then replace theirs.
    result = model.load_state_dict(tensors, strict=False)
    quantized = set(info["quantized"])
    missing = [k for k in result.missing_keys if k.rpartition(".")[0] not in quantized]
    if missing or result.unexpected_keys:
        raise LeanError(f"'{path}' does not match its config: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    for name, q in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, q)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model
