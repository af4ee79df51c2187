"""How a variant is measured and loaded: MeasureConfig, LoadOptions, and the checks every number passes.

    MeasureConfig(batch_sizes=[1, 32], repeats=60, max_cell_s=3.0)    # LeanError naming a bad key

Parent side of lean.bench (the suite's `measure` and `load` mappings; lean.bench.suite reads them).
Every number is checked up front (type, range, finite), the message naming its key.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from lean.bench.lm import check_measure_options
from lean.errors import LeanError
from lean.limits import MAX_BATCH_SIZE, MAX_SEQ_LENGTH, check_limit

ATTENTIONS = ("eager", "sdpa", "lean")  # `lean` is the fused Triton kernel (lean.attention)
DTYPES = ("float32", "bfloat16", "float16")
SPLITS = ("test", "validation")  # what measure.split may score


def check_int(where: str, value: Any, minimum: int, none_ok: bool = False) -> None:
    """A whole number >= minimum (None where allowed), else a LeanError naming `where`."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LeanError(f"{where} must be a whole number of at least {minimum}{' (or null)' if none_ok else ''}, "
                        f"got {value!r}")


def check_seconds(where: str, value: Any, none_ok: bool = False) -> None:
    """A finite positive number of seconds (None where allowed), else a LeanError naming `where`."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise LeanError(f"{where} must be a positive number of seconds{' (or null)' if none_ok else ''}, got {value!r}")


def check_keys(where: str, values: Any, known: set[str] | list[str]) -> dict[str, Any]:
    """A mapping with only known keys, or a LeanError that names the first unknown one."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise LeanError(f"{where} must be a mapping (key: value), got {type(values).__name__}")
    for key in values:
        if key not in known:
            raise LeanError(f"unknown key '{key}' in {where}; known keys: {', '.join(sorted(known))}")
    return dict(values)


def build_config(cls, values: dict[str, Any], where: str):
    """Construct a config dataclass; a wrong type becomes a LeanError naming `where`."""
    try:
        return cls(**values)
    except TypeError as e:
        raise LeanError(f"{where}: {e}") from None


@dataclass
class MeasureConfig:
    """How every variant is measured (a variant may override any of these for itself)."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    seq_lengths: list[int] = field(default_factory=lambda: [128, 256])
    warmup: int = 3  # untimed runs per (batch, length) cell: first calls pay for allocation and kernel selection
    repeats: int = 20  # timed runs per cell (at most)
    min_repeats: int = 5  # ...but at least this many, even past max_cell_s
    max_cell_s: float | None = None  # stop repeating a cell once its timed runs sum to this (None: no cap)
    # time every variant's calls in turn, all variants loaded at once, so a slow spell of a shared machine
    # falls on all of them alike (run-to-run ratios then agree); false: one variant after another, for
    # models that do not fit in memory together
    interleave: bool = True
    # measuring subprocesses keep the memory they free for their next call (glibc malloc told never to
    # return it to the system), as the jemalloc or tcmalloc that PyTorch's CPU tuning guide recommends
    # would, and as onnxruntime's arena does anyway. With glibc's defaults every PyTorch batch-32 call
    # maps its large buffers afresh and pays a page fault per 4 KiB: on a 2-vCPU VM dynamic int8 at
    # batch 32 x 128 took 311-451 ms a call, against 246-262 ms with the memory kept. false: glibc's defaults
    reuse_memory: bool = True
    timeout_s: float = 900.0  # per variant: its measuring subprocess is killed past this
    build_timeout_s: float | None = None  # per step build (None: no limit; fine-tuning takes minutes)
    threads: int | None = None  # intra-op threads; None: the physical cores (fixed and recorded)
    max_length: int | None = None  # accuracy: None = the max_length the model was trained at, else 128
    eval_batch_size: int = 32
    max_eval_samples: int | None = None  # None: the full test split (the honest figure)
    quality: bool = True
    latency: bool = True
    # lm tasks (lean.bench.lm): {window, stride, max_tokens, batch_size}; None: the defaults there
    perplexity: dict[str, Any] | None = None
    # lm tasks: {batch_sizes, new_tokens, prompt_tokens, repeats, warmup}; None: defaults; false: skip generation
    generation: dict[str, Any] | bool | None = None
    # the split quality is scored on: test (the figure to report) or validation (to choose variants on,
    # as `lean optimize` does, keeping the test split for the final report)
    split: str = "test"

    def __post_init__(self):
        check_measure_options(self.perplexity, self.generation)
        for name in ("batch_sizes", "seq_lengths"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
                setattr(self, name, value)
            if not isinstance(value, list) or not value or \
                    not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                raise LeanError(f"measure.{name} must be a non-empty list of positive integers, got {value!r}")
            what, limit = ("batch size", MAX_BATCH_SIZE) if name == "batch_sizes" else ("sequence length", MAX_SEQ_LENGTH)
            check_limit(f"measure.{name}: {what}", max(value), limit, "measure smaller cells")
        for name, minimum in (("warmup", 0), ("repeats", 1), ("min_repeats", 1), ("eval_batch_size", 1)):
            check_int(f"measure.{name}", getattr(self, name), minimum)
        check_int("measure.threads", self.threads, 1, none_ok=True)
        if self.threads is not None and self.threads > 4096:  # no machine has more; a typo would oversubscribe
            raise LeanError(f"measure.threads must be at most 4096, got {self.threads}")
        check_int("measure.max_length", self.max_length, 8, none_ok=True)
        check_int("measure.max_eval_samples", self.max_eval_samples, 1, none_ok=True)
        check_seconds("measure.timeout_s", self.timeout_s)
        check_seconds("measure.build_timeout_s", self.build_timeout_s, none_ok=True)
        check_seconds("measure.max_cell_s", self.max_cell_s, none_ok=True)
        for name in ("interleave", "reuse_memory", "quality", "latency"):
            if not isinstance(getattr(self, name), bool):
                raise LeanError(f"measure.{name} must be true or false, got {getattr(self, name)!r}")
        if self.split not in SPLITS:
            raise LeanError(f"measure.split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        self.min_repeats = min(self.min_repeats, self.repeats)

    def longer(self, factor: int) -> "MeasureConfig":
        """This config with `factor` times the timed calls and time per latency cell (`lean bench --rigorous`)."""
        return dataclasses.replace(self, repeats=self.repeats * factor, min_repeats=self.min_repeats * factor,
                                   max_cell_s=None if self.max_cell_s is None else self.max_cell_s * factor)

    def replace(self, overrides: dict[str, Any], where: str) -> "MeasureConfig":
        known = {f.name for f in dataclasses.fields(self)}
        overrides = check_keys(where, overrides, known)
        return build_config(MeasureConfig, {**dataclasses.asdict(self), **overrides}, where)


@dataclass
class LoadOptions:
    """How the measuring subprocess loads a variant's directory."""

    attention: str | None = None  # eager | sdpa | lean; None: the library default
    dtype: str | None = None  # float32 | bfloat16 | float16; None: as saved
    provider: str | None = None  # onnxruntime execution provider; None: CUDA when measuring on CUDA, else CPU

    def __post_init__(self):
        if self.attention is not None and self.attention not in ATTENTIONS:
            raise LeanError(f"load.attention '{self.attention}' is not one of {', '.join(ATTENTIONS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise LeanError(f"load.dtype '{self.dtype}' is not one of {', '.join(DTYPES)}")
