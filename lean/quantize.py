"""Quantize a model to 8 or 4 bits: bitsandbytes LLM.int8() / NF4 / FP4, PyTorch dynamic int8.

    lean quantize runs/teacher --method bnb-nf4 -o runs/teacher-nf4
    python -m pytest tests/test_quantize.py -q

Python, torchao style (in place, returns the model):

    import lean.quantize
    model = lean.quantize(model, lean.quantize.BnbNF4Config(double_quant=True))
    lean.quantize.save_quantized(model, "out")
    model = lean.quantize.load_quantized("out", device="cpu")

Shape of the module: one config dataclass per method that checks itself, a registry `HANDLERS` from
config type to a handler that turns one full-precision layer into its quantized twin, and a filter
(`plan_layers`) that picks which Linear/Conv1D layers are touched. Adding a method is one dataclass,
one handler, one entry in METHODS, one test.

On disk: bitsandbytes methods save with `save_pretrained` (quantization_config in config.json), so
`AutoModel*.from_pretrained` loads them back; dynamic-int8 saves int8 weights with their scales in
`model-dynamic-int8.safetensors` (no pickle) and `load_quantized` rebuilds the quantized layers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import types
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from lean.errors import LeanError

DYNAMIC_WEIGHTS = "model-dynamic-int8.safetensors"
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes' CPU and CUDA kernels both take
HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs")  # task heads kept in full precision by default


# ---- method configs ---------------------------------------------------------------------------

@dataclass
class QuantConfig:
    """What every method shares. `skip`: module names kept in full precision (transformers' rule: a
    name matches a module's full dotted name, a parent of it, or its last component). None keeps the
    task head (classifier / score / lm_head); an explicit list replaces that default."""

    skip: list[str] | None = None
    devices = ("cpu", "cuda")  # class attribute, not a field: where the method's kernels run

    def __post_init__(self):
        if self.skip is None:
            return
        if isinstance(self.skip, str):
            self.skip = [self.skip]
        self.skip = list(self.skip)
        for name in self.skip:
            if not isinstance(name, str) or not name.strip():
                raise LeanError(f"skip names must be non-empty module names, got {name!r}")


@dataclass
class BnbInt8Config(QuantConfig):
    """LLM.int8(): int8 weights with a per-row scale; activation columns above `threshold` run in 16 bits."""

    # 6.0 is the paper's value: it catches the emergent outlier features and leaves 99.9% of the matmul in int8.
    threshold: float = 6.0
    method: str = field(default="bnb-int8", init=False)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.threshold, (int, float)) or self.threshold < 0:
            raise LeanError(f"threshold must be >= 0 (0 turns off the outlier decomposition), got {self.threshold}")
        self.threshold = float(self.threshold)


@dataclass
class Bnb4BitConfig(QuantConfig):
    """4-bit weights in blocks of `blocksize` with one absmax scale per block (QLoRA's storage format)."""

    # Double quantization stores the block scales in 8 bits: ~0.37 fewer bits per weight, no measurable accuracy cost.
    double_quant: bool = True
    # float32 computes exactly on any CPU; bfloat16 is the fast choice on CUDA.
    compute_dtype: str = "float32"
    # 64 divides MiniLM's 384 and every power-of-two width; smaller blocks would cost more scale bytes.
    blocksize: int = 64
    method: str = field(default="", init=False)
    quant_type = ""  # class attribute: 'nf4' or 'fp4'

    def __post_init__(self):
        super().__post_init__()
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise LeanError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")
        if self.blocksize not in BLOCKSIZES:
            raise LeanError(f"blocksize must be one of {', '.join(map(str, BLOCKSIZES))}, got {self.blocksize}")
        if not isinstance(self.double_quant, bool):
            raise LeanError(f"double_quant must be true or false, got {self.double_quant!r}")


@dataclass
class BnbNF4Config(Bnb4BitConfig):
    """NF4: 16 levels at the quantiles of a normal distribution, the best 4-bit grid for normally distributed weights."""

    method: str = field(default="bnb-nf4", init=False)
    quant_type = "nf4"


@dataclass
class BnbFP4Config(Bnb4BitConfig):
    """FP4: a 4-bit float grid (1 sign, 2 exponent, 1 mantissa bit)."""

    method: str = field(default="bnb-fp4", init=False)
    quant_type = "fp4"


@dataclass
class DynamicInt8Config(QuantConfig):
    """PyTorch dynamic quantization: int8 weights, activations quantized per batch at run time (fbgemm/onednn, CPU only)."""

    # One scale per output row keeps small rows from being crushed by one large row (per-tensor loses ~1 point on MiniLM).
    per_channel: bool = True
    method: str = field(default="dynamic-int8", init=False)
    devices = ("cpu",)


METHODS: dict[str, type[QuantConfig]] = {
    "bnb-int8": BnbInt8Config,
    "bnb-nf4": BnbNF4Config,
    "bnb-fp4": BnbFP4Config,
    "dynamic-int8": DynamicInt8Config,
}


def method_config_class(method: str) -> type[QuantConfig]:
    if method not in METHODS:
        raise LeanError(f"unknown quantization method '{method}': known methods are {', '.join(METHODS)}")
    return METHODS[method]


# ---- the step's config ------------------------------------------------------------------------

@dataclass
class QuantizeStepConfig:
    """A method config plus how the step calibrates and evaluates (what `lean quantize` and suites set)."""

    quantization: QuantConfig
    task: str | None = None  # None: the task in the source's lean.json, else bbc-news
    text_column: str | None = None
    label_column: str | None = None
    split_seed: int | None = None  # None: the source's split seed, else 42
    calibration_samples: int = 32  # train-split texts whose activations measure each layer's SQNR
    max_length: int | None = None  # None: the source's max_length, else 128
    evaluate: bool = True  # test-split accuracy/macro-F1 when the source is a classifier with a task
    max_eval_samples: int | None = None  # a slice of the test split, for quick runs and tests
    device: str = "auto"  # auto: CUDA when there is one and the method runs there, else the CPU
    trust_remote_code: bool = False

    def __post_init__(self):
        if not isinstance(self.quantization, QuantConfig):
            raise LeanError("quantization must be a method config such as BnbNF4Config(); use config_from_dict(method=...)")
        if self.calibration_samples < 1:
            raise LeanError(f"--calibration-samples must be at least 1, got {self.calibration_samples}")
        if self.max_length is not None and not 8 <= self.max_length <= 8192:
            raise LeanError(f"--max-length must be between 8 and 8192, got {self.max_length}")
        if self.max_eval_samples is not None and self.max_eval_samples < 1:
            raise LeanError(f"max_eval_samples must be at least 1, got {self.max_eval_samples}")
        check_device(self.quantization, self.device)


def config_from_dict(method: str | None = None, **options) -> QuantizeStepConfig:
    """The registry's config factory: `config_from_dict(method="bnb-nf4", double_quant=False, task=...)`."""
    if method is None:
        raise LeanError(f"quantize needs a method: one of {', '.join(METHODS)}")
    cls = method_config_class(method)
    method_fields = {f.name for f in fields(cls) if f.init}
    step_fields = {f.name for f in fields(QuantizeStepConfig) if f.name != "quantization"}
    unknown = sorted(set(options) - method_fields - step_fields)
    if unknown:
        raise LeanError(f"quantize method '{method}' has no option {', '.join(unknown)}; "
                        f"its options are: {', '.join(sorted(method_fields | step_fields))}")
    method_config = cls(**{k: v for k, v in options.items() if k in method_fields})
    return QuantizeStepConfig(quantization=method_config, **{k: v for k, v in options.items() if k in step_fields})


def check_device(config: QuantConfig, device: str) -> None:
    """A method asked to run where its kernels do not exist is an error that names the device it needs."""
    kind = "cuda" if str(device).startswith("cuda") else str(device)
    if kind in ("cpu", "cuda") and kind not in config.devices:
        need = " or ".join(d.upper() if d == "cpu" else "CUDA" for d in config.devices)
        raise LeanError(f"method '{config.method}' runs on the {need} only, not on '{device}': use --device {config.devices[0]}")


# ---- which layers: the filter -----------------------------------------------------------------

def _conv1d_type():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def linear_layers(model) -> dict[str, Any]:
    """Every nn.Linear and GPT-2-style Conv1D (weight (in, out)) by full name, in model order."""
    import torch.nn as nn

    kinds = (nn.Linear, _conv1d_type())
    return {name: m for name, m in model.named_modules() if type(m) in kinds or isinstance(m, kinds)}


def matches(name: str, key: str) -> bool:
    """transformers' bitsandbytes rule, so a saved model reloads with the same layers quantized."""
    return key == name or f"{key}." in name or name.rsplit(".", 1)[-1] == key


def default_skip(model) -> list[str]:
    """The task head (classifier / score / lm_head / the output embeddings) and modules the model keeps in fp32."""
    names = [n for n, _ in model.named_children() if n in HEAD_NAMES]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        names += [n for n, m in model.named_modules() if m is output and n not in names]
    return names


def plan_layers(model, config: QuantConfig) -> tuple[list[str], list[str]]:
    """(names to quantize, names kept in full precision) among the model's linear layers."""
    layers = linear_layers(model)
    keep_fp32 = list(getattr(model, "_keep_in_fp32_modules", None) or []) + list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    keys = default_skip(model) if config.skip is None else list(config.skip)
    if config.skip is not None:
        unmatched = [k for k in config.skip if not any(matches(n, k) for n in layers)]
        if unmatched:
            some = ", ".join(list(layers)[:6]) + (", ..." if len(layers) > 6 else "")
            raise LeanError(f"--skip {', '.join(unmatched)} names no linear layer of this model; its linear layers are: {some}")
    keys += keep_fp32
    tied = _tied_to_embedding(model, layers)
    quantized, skipped = [], []
    for name in layers:
        (skipped if name in tied or any(matches(name, k) for k in keys) else quantized).append(name)
    return quantized, skipped


def _tied_to_embedding(model, layers) -> set[str]:
    """Linear layers that share their weight with an input embedding (GPT-2's lm_head): never quantized."""
    import torch.nn as nn

    embedding_ptrs = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    return {n for n, m in layers.items() if m.weight.data_ptr() in embedding_ptrs}


def _linear_weight(layer):
    """(weight (out, in), bias or None) of an nn.Linear or a Conv1D (whose weight is stored (in, out))."""
    weight = layer.weight.detach()
    if isinstance(layer, _conv1d_type()):
        weight = weight.t()
    return weight.contiguous(), (None if layer.bias is None else layer.bias.detach())


# ---- handlers: one full-precision layer -> its quantized twin ---------------------------------

HANDLERS: dict[type, Callable[[Any, Any, str], Any]] = {}


def register_handler(config_type: type) -> Callable:
    def wrap(fn):
        HANDLERS[config_type] = fn
        return fn
    return wrap


def _bnb():
    try:
        import bitsandbytes
    except ImportError:
        raise LeanError("bitsandbytes methods need the package bitsandbytes: pip install bitsandbytes") from None
    return bitsandbytes


@register_handler(BnbInt8Config)
def _bnb_int8(layer, config: BnbInt8Config, device: str):
    import torch

    bnb = _bnb()
    weight, bias = _linear_weight(layer)
    out_features, in_features = weight.shape
    q = bnb.nn.Linear8bitLt(in_features, out_features, bias is not None, has_fp16_weights=False,
                            threshold=config.threshold, device="meta")
    # Int8Params quantizes (row-wise absmax -> int8 + SCB scales) when moved off the CPU copy: .to(device) does it.
    q.weight = bnb.nn.Int8Params(weight.float().cpu(), requires_grad=False, has_fp16_weights=False)
    if bias is not None:
        q.bias = torch.nn.Parameter(bias.float().cpu(), requires_grad=False)
    q.source_cls = type(layer)  # transformers reads this when it loads the saved directory
    return q.to(device)


def _bnb_4bit(layer, config: Bnb4BitConfig, device: str):
    import torch

    bnb = _bnb()
    weight, bias = _linear_weight(layer)
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


def use_generic_bnb_cpu_kernel(model) -> int:
    """Keep bitsandbytes' 4-bit layers on its generic CPU kernel. On CPUs with AVX512-BF16, bitsandbytes
    0.50 repacks a layer's weights for a faster kernel at its first forward; that repacking fails on
    layers whose in_features is no multiple of the block size ("shape '[N, 0]' is invalid"), stores the
    block scales in bf16, so a saved and reloaded model no longer gives the same logits, and makes the
    same directory compute differently from one CPU to another. Returns how many layers were switched."""
    switched = 0
    for module in model.modules() if hasattr(model, "modules") else [model]:
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


register_handler(BnbNF4Config)(_bnb_4bit)
register_handler(BnbFP4Config)(_bnb_4bit)


@register_handler(DynamicInt8Config)
def _dynamic_int8(layer, config: DynamicInt8Config, device: str):
    import torch
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    weight, bias = _linear_weight(layer)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device="meta")
    linear.weight = torch.nn.Parameter(weight.float().cpu(), requires_grad=False)
    if bias is not None:
        linear.bias = torch.nn.Parameter(bias.float().cpu(), requires_grad=False)
    # Weight scales come from the weight's own min/max: the result is deterministic.
    linear.qconfig = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
    with _quiet_torch_ao():
        q = nnqd.Linear.from_float(linear)
    q.source_cls = type(layer)
    return q


# ---- quantize_: the in-place verb -------------------------------------------------------------

@contextlib.contextmanager
def _quiet_torch_ao():
    """torch 2.13 warns that quantized tensors are deprecated (torchao is the successor); docs/quantize.md says so once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        yield


def model_device(model) -> str:
    try:
        return str(next(model.parameters()).device)
    except StopIteration:
        return "cpu"


def quantized_layers(model, config: QuantConfig, names: list[str], device: str) -> dict[str, Any]:
    """name -> quantized twin of each named layer (the model is not changed)."""
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise LeanError(f"no handler registered for {type(config).__name__}: register one with @register_handler")
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
        "conv1d": [n for n, q in layers.items() if getattr(q, "source_cls", None) is _conv1d_type()],
    }
    if config.method.startswith("bnb-") and hasattr(model, "config"):  # a transformers model: make save_pretrained work
        _attach_bnb_quantizer(model, config, skipped)
    return model


def quantize_(model, config: QuantConfig, device: str | None = None):
    """Quantize `model`'s linear layers in place with `config` and return it (torchao's `quantize_`).

    The layers are quantized on the model's device (or `device`); a method that cannot run there raises.
    """
    if not isinstance(config, QuantConfig):
        raise LeanError(f"quantize_ takes a method config ({', '.join(c.__name__ for c in METHODS.values())}), got {type(config).__name__}")
    if getattr(model, "lean_quantization", None) or getattr(getattr(model, "config", None), "quantization_config", None) is not None:
        raise LeanError("this model is already quantized: quantize its full-precision version instead")
    device = device or model_device(model)
    check_device(config, device)
    if config.method == "dynamic-int8":
        _check_dynamic_engine()
    quantized, skipped = plan_layers(model, config)
    if not quantized:
        raise LeanError("no linear layer is left to quantize: --skip covers them all")
    model.to(device)
    return install_layers(model, config, quantized_layers(model, config, quantized, device), skipped)


quantize = quantize_  # `lean.quantize.quantize(model, config)` reads as well


def _check_dynamic_engine() -> None:
    import torch

    if not torch.backends.quantized.supported_engines or torch.backends.quantized.supported_engines == ["none"]:
        raise LeanError("dynamic-int8 needs a PyTorch build with a quantized engine (fbgemm, x86 or qnnpack); this one has none")


def _bitsandbytes_config(config: QuantConfig, skipped: list[str]):
    import torch
    from transformers import BitsAndBytesConfig

    # The skip list holds full names of the layers left in full precision, so the loader rebuilds exactly our layers.
    if isinstance(config, BnbInt8Config):
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=config.threshold, llm_int8_skip_modules=list(skipped))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.quant_type, bnb_4bit_use_double_quant=config.double_quant,
                              bnb_4bit_compute_dtype=getattr(torch, config.compute_dtype), llm_int8_skip_modules=list(skipped))


def _attach_bnb_quantizer(model, config: QuantConfig, skipped: list[str]) -> None:
    """Mark the model as transformers marks a bitsandbytes model it loaded, so save_pretrained writes a loadable dir."""
    from transformers.quantizers.auto import AutoHfQuantizer
    from transformers.utils.quantization_config import QuantizationMethod

    qc = _bitsandbytes_config(config, skipped)
    quantizer = AutoHfQuantizer.from_config(qc, pre_quantized=True)
    quantizer.modules_to_not_convert = list(skipped)
    model.hf_quantizer = quantizer
    model.config.quantization_config = qc
    model.quantization_method = QuantizationMethod.BITS_AND_BYTES
    if isinstance(config, BnbInt8Config):
        model.is_loaded_in_8bit = True
        model.is_8bit_serializable = True
    else:
        model.is_loaded_in_4bit = True
        model.is_4bit_serializable = True


# ---- sizes ------------------------------------------------------------------------------------

def _module_bytes(module, seen: set) -> int:
    """Bytes a module holds itself (not its children's), quantization statistics included; tensors in
    `seen` (by address) are not counted again, so tied weights count once."""
    import torch.ao.nn.quantized.dynamic as nnqd

    tensors = [t for t in list(module._parameters.values()) + list(module._buffers.values()) if t is not None]
    weight = module._parameters.get("weight")
    state = getattr(weight, "quant_state", None)
    if state is not None:  # bnb 4-bit: block scales, the 16-entry code, and the nested (double-quant) state
        tensors += [state.absmax, state.code]
        if getattr(state, "state2", None) is not None:
            tensors += [state.state2.absmax, state.state2.code, state.offset]
    scb = getattr(weight, "SCB", None)
    if scb is not None:  # bnb int8: one scale per output row
        tensors.append(scb)
    total = 0
    for t in tensors:
        key = (t.data_ptr(), t.nbytes)
        if key not in seen:
            seen.add(key)
            total += t.nbytes
    if isinstance(module, nnqd.Linear):  # packed inside fbgemm: count int8 weight + scale/zero point + bias as saved
        total += sum(t.nbytes for t in _dynamic_layer_tensors(module).values())
    return total


def weight_bytes(model) -> dict[str, int]:
    """Bytes of the whole model's tensors and of its linear layers alone (tied weights counted once;
    an lm_head tied to the embeddings counts as embedding, not as a linear layer)."""
    kinds = _linear_kinds()
    embedding_ptrs = {m.weight.data_ptr() for m in model.modules() if type(m).__name__ == "Embedding"}
    linear = 0
    for m in model.modules():
        weight = m._parameters.get("weight")
        if isinstance(m, kinds) and not (weight is not None and weight.data_ptr() in embedding_ptrs):
            linear += _module_bytes(m, set())
    seen: set = set()
    return {"model": sum(_module_bytes(m, seen) for m in model.modules()), "linear": linear}


def _linear_kinds() -> tuple:
    import torch.ao.nn.quantized.dynamic as nnqd
    import torch.nn as nn

    kinds = [nn.Linear, _conv1d_type(), nnqd.Linear]
    try:
        import bitsandbytes as bnb

        kinds += [bnb.nn.Linear8bitLt, bnb.nn.Linear4bit]
    except ImportError:
        pass
    return tuple(kinds)


# ---- saving and loading -----------------------------------------------------------------------

def _dynamic_layer_tensors(module) -> dict[str, Any]:
    """int8 weight (out, in), float32 scales and int32 zero points (per row or one), float32 bias."""
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


def save_quantized(model, out: str | Path) -> Path:
    """Write a model that `quantize_` changed into `out` (weights + config; the caller saves the tokenizer)."""
    info = getattr(model, "lean_quantization", None)
    if not info:
        raise LeanError("this model was not quantized by lean.quantize: call quantize_(model, config) first")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if info["method"].startswith("bnb-"):
        model.save_pretrained(out, safe_serialization=True)
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
        for key, value in _dynamic_layer_tensors(modules[name]).items():
            tensors[f"{name}.{key}"] = value
    metadata = {"format": "pt", "lean_quantization": json.dumps({**info, "tied": tied})}
    save_file(tensors, str(out / DYNAMIC_WEIGHTS), metadata=metadata)
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(out)
    return out


def quantization_of(path: str | Path) -> str | None:
    """The method a directory was quantized with ('bnb-nf4', 'dynamic-int8', ...), or None for full precision."""
    path = Path(path)
    if (path / DYNAMIC_WEIGHTS).is_file():
        return "dynamic-int8"
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    qc = config.get("quantization_config")
    if qc:
        if qc.get("quant_method") == "bitsandbytes":
            return "bnb-int8" if qc.get("load_in_8bit") else f"bnb-{qc.get('bnb_4bit_quant_type', 'fp4')}"
        return str(qc.get("quant_method", "unknown"))
    from lean.models import read_manifest

    manifest = read_manifest(path)
    if manifest.get("step") == "quantize":
        return manifest.get("quantization", {}).get("method", "unknown")
    return None


def _architecture_class(config, path):
    import transformers

    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise LeanError(f"'{path}' names no architecture transformers knows ({names or 'none'}) in config.json")
    return cls


def load_quantized(path: str | Path, device: str = "cpu"):
    """Load any directory `lean quantize` (or save_quantized) wrote, on `device`, ready for inference."""
    from lean.models import load_config, resolve_device

    method = quantization_of(path)
    if method is None:
        raise LeanError(f"'{path}' is not a quantized model directory (no quantization_config, no {DYNAMIC_WEIGHTS})")
    if method != "dynamic-int8" and not method.startswith("bnb-"):
        raise LeanError(f"'{path}' is quantized with '{method}', which lean.quantize does not load")
    check_device(METHODS[method](), device)
    device = resolve_device(device)
    _silence_int8_cast_notice()
    config = load_config(str(path))
    if method == "dynamic-int8":
        model = _load_dynamic(path, config)
    else:
        model = _load_bnb(path, config, device)
    return model.eval()


def _load_bnb(path, config, device):
    import torch
    from transformers.utils import logging as hf_logging

    _bnb()
    cls = _architecture_class(config, path)
    dtype = getattr(config, "dtype", None)
    dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers logs device-map notes that are noise here
    try:
        # dtype: the layers left in full precision keep their saved dtype (bitsandbytes would default them to fp16).
        model = cls.from_pretrained(str(path), device_map=device, dtype=dtype, use_safetensors=True)
        use_generic_bnb_cpu_kernel(model)
        return model
    except (OSError, ValueError) as e:
        raise LeanError(f"cannot load the quantized model '{path}': {str(e).strip().splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_dynamic(path, config):
    import torch
    import torch.ao.nn.quantized.dynamic as nnqd
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers.modeling_utils import no_init_weights

    _check_dynamic_engine()
    file = Path(path) / DYNAMIC_WEIGHTS
    with safe_open(str(file), "pt") as f:
        info = json.loads(f.metadata()["lean_quantization"])
    tensors = load_file(str(file))
    cls = _architecture_class(config, path)
    with no_init_weights():  # every weight is overwritten below; skip the random init
        model = cls(config)
    model.eval()
    layers = {}
    for name in info["quantized"]:  # (out, in) int8 + scales -> a dynamic quantized Linear
        weight = tensors.pop(f"{name}.weight")
        scale, zero_point = tensors.pop(f"{name}.weight_scale"), tensors.pop(f"{name}.weight_zero_point")
        bias = tensors.pop(f"{name}.bias", None)
        with _quiet_torch_ao():
            if scale.numel() == weight.shape[0] and info["config"].get("per_channel", True):
                qweight = torch._make_per_channel_quantized_tensor(weight, scale.double(), zero_point.long(), 0)
            else:
                qweight = torch._make_per_tensor_quantized_tensor(weight, float(scale[0]), int(zero_point[0]))
            layers[name] = nnqd.Linear(weight.shape[1], weight.shape[0], bias_=bias is not None, dtype=torch.qint8)
            layers[name].set_weight_bias(qweight, bias)
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
    model.lean_quantization = {k: v for k, v in info.items() if k != "tied"}
    return model


# ---- the step: quantize a directory, measure per-layer error, evaluate ---------------------------

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


def run(source: str, config: QuantizeStepConfig, out: Path) -> dict[str, Any]:
    """The step: load fp32, measure each layer's SQNR on calibration texts, quantize, evaluate, save."""
    _silence_int8_cast_notice()
    return _run(source, config, out)


class _DropInt8CastNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


def _silence_int8_cast_notice() -> None:
    """bitsandbytes logs on every int8 forward that fp32 inputs are cast to fp16; that cast is LLM.int8() itself
    (documented in docs/quantize.md), so lean drops that one message and nothing else."""
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastNotice) for f in logger.filters):
        logger.addFilter(_DropInt8CastNotice())


def _run(source: str, config: QuantizeStepConfig, out: Path) -> dict[str, Any]:
    import torch

    from lean.data import load_task
    from lean.metrics import classification_metrics, predict_logits
    from lean.models import environment, load_config, load_model, load_tokenizer, read_manifest, resolve_device

    qconfig = config.quantization
    resolved = check_source(source)
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() and "cuda" in qconfig.devices else "cpu"
    check_device(qconfig, device)
    device = resolve_device(device)
    parent = read_manifest(resolved)
    parent_task = parent.get("task") or {}
    parent_config = parent.get("config") or {}
    kind = model_kind(load_config(resolved, config.trust_remote_code))
    task_spec = config.task or parent_task.get("spec") or "bbc-news"
    split_seed = config.split_seed if config.split_seed is not None else parent_task.get("split_seed", 42)
    max_length = config.max_length or parent_config.get("max_length") or 128
    tokenizer = load_tokenizer(resolved, config.trust_remote_code)
    model = load_model(resolved, kind, config.trust_remote_code).eval().to(device)
    if kind == "lm":
        max_length = min(max_length, getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", max_length))
    if config.quantization.method == "dynamic-int8":
        _check_dynamic_engine()
    quantized, skipped = plan_layers(model, qconfig)  # a --skip that names nothing fails here, before any data is read
    if not quantized:
        raise LeanError("no linear layer is left to quantize: --skip covers them all")
    task_kind = parent_task.get("kind", "auto") if config.task is None and parent_task else "auto"
    task = load_task(task_spec, config.text_column or parent_task.get("text_column"),
                     config.label_column or parent_task.get("label_column"), split_seed, kind=task_kind)
    has_task = bool(parent_task) or config.task is not None
    if kind == "classification" and has_task and config.evaluate and model.config.num_labels != task.num_labels:
        raise LeanError(f"the model has {model.config.num_labels} labels but task '{task_spec}' has {task.num_labels}: "
                        "pass the task it was trained on (--task) or --no-eval")
    size_before = weight_bytes(model)

    calibration = _calibration_batches(tokenizer, task.train.texts[:config.calibration_samples], max_length, device, model)
    layers = quantized_layers(model, qconfig, quantized, device)
    per_layer, reference = _layer_sqnr(model, layers, calibration)
    install_layers(model, qconfig, layers, skipped)
    model.eval()
    output_error = _output_error(model, calibration, reference)
    size_after = weight_bytes(model)

    save_quantized(model, out)
    tokenizer.save_pretrained(out)

    result: dict[str, Any] = {
        "quantization": {
            "method": qconfig.method,
            "config": asdict(qconfig),
            "device": device,
            "quantized": quantized,
            "skipped": skipped,
            "calibration": {"task": task_spec, "split": "train", "samples": len(calibration_texts(calibration)),
                            "max_length": max_length},
            "layers": per_layer,
            "output": output_error,
            "file": DYNAMIC_WEIGHTS if qconfig.method == "dynamic-int8" else "model.safetensors",
        },
        "size": {"model_bytes_before": size_before["model"], "model_bytes_after": size_after["model"],
                 "linear_bytes_before": size_before["linear"], "linear_bytes_after": size_after["linear"],
                 "model_ratio": round(size_after["model"] / size_before["model"], 4),
                 "linear_ratio": round(size_after["linear"] / size_before["linear"], 4),
                 "file_bytes": sum(f.stat().st_size for f in Path(out).glob("*.safetensors"))},
        "environment": environment(device),
    }
    if kind == "lm" and has_task and task.kind == "lm":
        result["task"] = task.describe()
        if config.evaluate:
            from lean.lm import perplexity

            # The parent's own window and stride, so the figures compare with its manifest.
            stride = parent_config.get("perplexity_stride") or max_length // 2
            test_texts = task.test.texts[:config.max_eval_samples] if config.max_eval_samples else task.test.texts
            result["metrics"] = {"test": perplexity(model, tokenizer, test_texts, max_length, stride)}
            parent_test = (parent.get("metrics") or {}).get("test") or {}
            if parent_test.get("tokens") == result["metrics"]["test"]["tokens"] and "perplexity" in parent_test:
                result["metrics"]["test_perplexity_change_vs_parent"] = round(result["metrics"]["test"]["perplexity"] - parent_test["perplexity"], 4)
    if kind == "classification" and has_task:
        result["task"] = task.describe()
        if config.evaluate:
            test = task.test.take(config.max_eval_samples)
            logits = predict_logits(model, tokenizer, test.texts, max_length, batch_size=32)
            result["metrics"] = {"test": classification_metrics(test.labels, logits.argmax(-1).tolist(), task.label_names)}
            parent_test = (parent.get("metrics") or {}).get("test") or {}
            if parent_test.get("n") == len(test) and "accuracy" in parent_test:
                result["metrics"]["test_accuracy_change_vs_parent"] = round(result["metrics"]["test"]["accuracy"] - parent_test["accuracy"], 6)
    return result


def calibration_texts(batches) -> list[str]:
    return [t for b in batches for t in b["texts"]]


def _calibration_batches(tokenizer, texts, max_length, device, model, batch_size: int = 8) -> list[dict]:
    """Tokenized calibration batches, keeping only the inputs the model's forward takes (Llama has no token_type_ids)."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    batches = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i:i + batch_size])
        enc = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        batches.append({"texts": chunk, "inputs": {k: v.to(device) for k, v in enc.items() if k in accepted}})
    return batches


def _sqnr_db(signal: float, noise: float) -> float:
    import math

    if noise <= 0:
        return float("inf")
    return round(10 * math.log10(signal / noise), 3) if signal > 0 else float("-inf")


def _layer_sqnr(model, layers: dict[str, Any], batches) -> tuple[list[dict], list]:
    """Each quantized layer's output against its fp32 layer's on the same real inputs (padding excluded).

    Runs the fp32 model once; a hook feeds each layer's input to its quantized twin. SQNR = 10 log10(
    sum ref^2 / sum (ref - q)^2) over every real token's output vector. Returns the fp32 logits too.
    """
    import torch

    modules = dict(model.named_modules())
    energy = {name: [0.0, 0.0] for name in layers}
    current_mask = {}

    def hook_for(name):
        def hook(module, inputs, output):
            q_out = layers[name](inputs[0]).float()
            ref = output.float()
            mask = current_mask.get("mask")
            if mask is not None and ref.dim() == 3 and ref.shape[:2] == mask.shape:  # (B, T, out) -> (tokens, out)
                ref, q_out = ref[mask], q_out[mask]
            energy[name][0] += float(ref.pow(2).sum())
            energy[name][1] += float((ref - q_out).pow(2).sum())
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    reference = []
    try:
        with torch.inference_mode():
            for batch in batches:
                mask = batch["inputs"].get("attention_mask")
                current_mask["mask"] = mask.bool() if mask is not None else None
                reference.append(model(**batch["inputs"]).logits.float())
    finally:
        for h in handles:
            h.remove()
    per_layer = []
    for name, (signal, noise) in energy.items():
        layer = modules[name]
        weight, _ = _linear_weight(layer)
        per_layer.append({"name": name, "type": type(layer).__name__, "shape": list(weight.shape), "sqnr_db": _sqnr_db(signal, noise)})
    return per_layer, reference


def _output_error(model, batches, reference) -> dict[str, Any]:
    """The whole model's logits against fp32 on the calibration texts: SQNR and top-1 agreement."""
    import torch

    signal = noise = 0.0
    agree = total = 0
    with torch.inference_mode():
        for batch, ref in zip(batches, reference):
            out = model(**batch["inputs"]).logits.float()
            mask = batch["inputs"].get("attention_mask")
            if out.dim() == 3 and mask is not None:  # LM logits (B, T, vocab): real tokens only
                out, ref = out[mask.bool()], ref[mask.bool()]
            signal += float(ref.pow(2).sum())
            noise += float((ref - out).pow(2).sum())
            agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
            total += out.shape[0]
    return {"logits_sqnr_db": _sqnr_db(signal, noise), "top1_agreement": round(agree / max(total, 1), 6), "positions": total}


def worst_layers(manifest: dict[str, Any], n: int = 5) -> list[dict]:
    """The n quantized layers with the lowest SQNR (where accuracy goes)."""
    layers = manifest.get("quantization", {}).get("layers", [])
    return sorted(layers, key=lambda l: l["sqnr_db"])[:n]


class _CallableModule(types.ModuleType):
    """`import lean.quantize; lean.quantize(model, config)` calls quantize_ (the module stays a module)."""

    def __call__(self, model, config, device: str | None = None):
        return quantize_(model, config, device)


sys.modules[__name__].__class__ = _CallableModule
