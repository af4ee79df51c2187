"""Method configs (one dataclass per method) and the step's config; each checks itself on creation.

A method config carries `version`, the layout it was written with, so a saved config loads back as
it was saved (`method_config_from_dict(asdict(config)) == config`), and a directory written by a
newer lean is refused by name instead of being read wrongly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from lean.errors import LeanError
from lean.quantize.registry import METHODS, method_config_class, register_method

CONFIG_VERSION = 1  # bump when a field changes meaning; __post_init__ then upgrades or refuses older layouts
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes' CPU and CUDA kernels both take


def require_int(option: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    """A whole number within [minimum, maximum]; bools, floats (nan, inf) and strings are refused by option name."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum and (maximum is None or value <= maximum)
    if not ok:
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"a whole number >= {minimum}"
        raise LeanError(f"{option} must be {bounds}, got {value!r}")


def require_bool(option: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise LeanError(f"{option} must be true or false, got {value!r}")


@dataclass
class QuantConfig:
    """What every method shares. `skip`: module names kept in full precision (transformers' rule: a
    name matches a module's full dotted name, a parent of it, or its last component). None keeps the
    task head (classifier / score / lm_head); an explicit list replaces that default."""

    skip: list[str] | None = None
    version: int = CONFIG_VERSION
    devices = ("cpu", "cuda")  # class attribute, not a field: where the method's kernels run

    def __post_init__(self):
        if isinstance(self.version, bool) or not isinstance(self.version, int) or not 1 <= self.version <= CONFIG_VERSION:
            raise LeanError(f"quantization config version {self.version!r} is not one this lean reads "
                            f"(1 to {CONFIG_VERSION}): it was saved by a newer lean, so upgrade lean")
        if self.skip is None:
            return
        if isinstance(self.skip, str):
            self.skip = [self.skip]
        self.skip = list(self.skip)
        for name in self.skip:
            if not isinstance(name, str) or not name.strip():
                raise LeanError(f"--skip names must be non-empty module names, got {name!r}")


@register_method
@dataclass
class BnbInt8Config(QuantConfig):
    """LLM.int8(): int8 weights with a per-row scale; activation columns above `threshold` run in 16 bits."""

    # 6.0 is the paper's value: it catches the emergent outlier features and leaves 99.9% of the matmul in int8.
    threshold: float = 6.0
    method: str = field(default="bnb-int8", init=False)

    def __post_init__(self):
        super().__post_init__()
        value = self.threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise LeanError(f"--threshold must be >= 0 and finite (0 turns off the outlier decomposition), got {value!r}")
        if value > 1e6:  # no activation is that large: such a value is a typo, not a setting
            raise LeanError(f"--threshold must be at most 1e6 (0 turns off the outlier decomposition), got {value!r}")
        self.threshold = float(value)


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
        if isinstance(self.blocksize, bool) or self.blocksize not in BLOCKSIZES:
            raise LeanError(f"--blocksize must be one of {', '.join(map(str, BLOCKSIZES))}, got {self.blocksize!r}")
        require_bool("--double-quant", self.double_quant)


@register_method
@dataclass
class BnbNF4Config(Bnb4BitConfig):
    """NF4: 16 levels at the quantiles of a normal distribution, the best 4-bit grid for normally distributed weights."""

    method: str = field(default="bnb-nf4", init=False)
    quant_type = "nf4"


@register_method
@dataclass
class BnbFP4Config(Bnb4BitConfig):
    """FP4: a 4-bit float grid (1 sign, 2 exponent, 1 mantissa bit)."""

    method: str = field(default="bnb-fp4", init=False)
    quant_type = "fp4"


@register_method
@dataclass
class DynamicInt8Config(QuantConfig):
    """PyTorch dynamic quantization: int8 weights, activations quantized per batch at run time (fbgemm/onednn, CPU only)."""

    # One scale per output row keeps small rows from being crushed by one large row (per-tensor loses ~1 point on MiniLM).
    per_channel: bool = True
    method: str = field(default="dynamic-int8", init=False)
    devices = ("cpu",)

    def __post_init__(self):
        super().__post_init__()
        require_bool("--per-channel", self.per_channel)


def method_options(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.init}


def method_config_from_dict(data: dict[str, Any]) -> QuantConfig:
    """A method config from its saved form (`asdict(config)`, with `method`), checked like a new one."""
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise LeanError(f"a saved quantization config must be an object with a method, got {data!r}")
    cls = method_config_class(data["method"])
    values = {k: v for k, v in data.items() if k != "method"}
    unknown = sorted(set(values) - method_options(cls))
    if unknown:
        raise LeanError(f"quantize method '{data['method']}' has no option {', '.join(unknown)}; "
                        f"its options are: {', '.join(sorted(method_options(cls)))}")
    return cls(**values)


def check_device(config: QuantConfig, device: str) -> None:
    """A method asked to run where its kernels do not exist is an error that names the device it needs."""
    kind = "cuda" if str(device).startswith("cuda") else str(device)
    if kind in ("cpu", "cuda") and kind not in config.devices:
        need = " or ".join(d.upper() if d == "cpu" else "CUDA" for d in config.devices)
        raise LeanError(f"method '{config.method}' runs on the {need} only, not on '{device}': use --device {config.devices[0]}")


@dataclass
class QuantizeStepConfig:
    """A method config plus how the step calibrates and evaluates (what `lean quantize` and suites set)."""

    quantization: QuantConfig
    task: str | None = None  # None: the task in the source's lean.json, else none (lean's sample texts, no accuracy)
    text_column: str | None = None
    label_column: str | None = None
    split_seed: int | None = None  # None: the source's split seed, else 42
    calibration_samples: int = 32  # texts whose activations measure each layer's SQNR
    max_length: int | None = None  # None: the source's max_length, else 128
    evaluate: bool = True  # test-split accuracy/macro-F1 (or perplexity) when there is a task
    max_eval_samples: int | None = None  # a slice of the test split, for quick runs and tests
    device: str = "auto"  # auto: CUDA when there is one and the method runs there, else the CPU
    trust_remote_code: bool = False

    def __post_init__(self):
        if not isinstance(self.quantization, QuantConfig):
            raise LeanError("quantization must be a method config such as BnbNF4Config(); use config_from_dict(method=...)")
        require_int("--calibration-samples", self.calibration_samples, 1)
        if self.max_length is not None:
            require_int("--max-length", self.max_length, 8, 8192)
        if self.max_eval_samples is not None:
            require_int("--max-eval-samples", self.max_eval_samples, 1)
        if self.split_seed is not None:
            require_int("--split-seed", self.split_seed, 0)
        for option in ("task", "text_column", "label_column"):
            value = getattr(self, option)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise LeanError(f"--{option.replace('_', '-')} must be a non-empty name, got {value!r}")
        require_bool("evaluate", self.evaluate)
        check_device(self.quantization, self.device)


def config_from_dict(method: str | None = None, quantization: dict | QuantConfig | None = None, **options) -> QuantizeStepConfig:
    """The registry's config factory, flat (`config_from_dict(method="bnb-nf4", double_quant=False, task=...)`)
    or as saved in a manifest (`config_from_dict(**manifest["config"])`, which gives back the same config)."""
    step_fields = {f.name for f in fields(QuantizeStepConfig) if f.name != "quantization"}
    if quantization is not None:
        if method is not None:
            raise LeanError("give either method (with its options) or a saved quantization config, not both")
        method_config = quantization if isinstance(quantization, QuantConfig) else method_config_from_dict(quantization)
        unknown = sorted(set(options) - step_fields)
        if unknown:
            raise LeanError(f"the quantize step has no option {', '.join(unknown)}; its options are: {', '.join(sorted(step_fields))}")
        return QuantizeStepConfig(quantization=method_config, **options)
    if method is None:
        raise LeanError(f"quantize needs a method: one of {', '.join(METHODS)}")
    cls = method_config_class(method)
    own = method_options(cls)
    unknown = sorted(set(options) - own - step_fields)
    if unknown:
        raise LeanError(f"quantize method '{method}' has no option {', '.join(unknown)}; "
                        f"its options are: {', '.join(sorted(own | step_fields))}")
    method_config = cls(**{k: v for k, v in options.items() if k in own})
    return QuantizeStepConfig(quantization=method_config, **{k: v for k, v in options.items() if k in step_fields})
