"""What `lean optimize` is asked: the accuracy budget, the deployment target, the objective, when to stop.

    from lean.optimize import OptimizeConfig, Budget
    config = OptimizeConfig(model="minilm-l6", task="bbc-news", output="runs/optimize-bbc",
                            budget=Budget(max_drop=1.0), time_budget="30m")

Every value is checked in `__post_init__`, before any model is built: a bad budget, a non-finite number
or an unknown objective is a one-line LeanError that says what to pass instead.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lean.errors import LeanError
from lean.limits import MAX_BATCH_SIZE, MAX_SEQ_LENGTH, check_limit

# objective -> (the trial figure it reads, whether larger is better)
OBJECTIVES: dict[str, tuple[str, bool]] = {
    "latency": ("latency_ms", False),
    "throughput": ("throughput_sps", True),
    "memory": ("peak_memory_mb", False),
    "size": ("weights_bytes", False),
}
DEVICES = ("auto", "cpu", "cuda")  # auto: cuda when there is one (resolved when the run starts)


def parse_duration(text: str | float | int | None) -> float | None:
    """'30m', '1h30m', '90s', '45' (minutes) -> seconds; None stays None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        seconds = float(text) * 60
    else:
        value = str(text).strip().lower()
        match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?", value)
        if value and re.fullmatch(r"\d+(?:\.\d+)?", value):
            seconds = float(value) * 60
        elif value and match and any(match.groups()):
            h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = h * 3600 + m * 60 + s
        else:
            raise LeanError(f"--time-budget '{text}' is not a duration: write it like 30m, 1h30m or 90s")
    if not math.isfinite(seconds) or seconds <= 0:
        raise LeanError(f"--time-budget must be a positive duration such as 30m, got '{text}'")
    return seconds


@dataclass
class Budget:
    """How much quality a candidate may lose against the teacher, on the validation split."""

    max_drop: float | None = None  # accuracy points (0.5 = half a point); with relative: percent of the teacher's
    relative: bool = False
    max_ppl_ratio: float | None = None  # causal LMs: candidate perplexity over the teacher's

    def __post_init__(self):
        if (self.max_drop is None) == (self.max_ppl_ratio is None):
            raise LeanError("give one budget: --max-drop POINTS for classifiers or --max-ppl-ratio R for causal LMs")
        if self.max_drop is not None:
            if not isinstance(self.max_drop, (int, float)) or not math.isfinite(self.max_drop) or not 0 <= self.max_drop < 100:
                raise LeanError(f"--max-drop must be a number of points from 0 to under 100 (e.g. 1), got {self.max_drop}")
        elif self.relative:
            raise LeanError("--relative applies to --max-drop, not to --max-ppl-ratio")
        if self.max_ppl_ratio is not None:
            if not isinstance(self.max_ppl_ratio, (int, float)) or not math.isfinite(self.max_ppl_ratio) or self.max_ppl_ratio < 1:
                raise LeanError(f"--max-ppl-ratio must be a finite ratio of at least 1 (e.g. 1.05), got {self.max_ppl_ratio}")

    @property
    def metric(self) -> str:
        return "perplexity" if self.max_ppl_ratio is not None else "accuracy"

    def loss(self, reference: dict[str, Any], quality: dict[str, Any]) -> float | None:
        """What the candidate lost against the reference, in the budget's unit: points (or percent with
        relative) of accuracy, or the perplexity ratio. None when either figure is missing."""
        ref, got = reference.get(self.metric), quality.get(self.metric)
        if not isinstance(ref, (int, float)) or not isinstance(got, (int, float)):
            return None
        if self.metric == "perplexity":
            return got / ref if ref > 0 else None
        if self.relative:
            return (ref - got) / ref * 100 if ref > 0 else None
        return (ref - got) * 100

    @property
    def allowed(self) -> float:
        return float(self.max_ppl_ratio if self.metric == "perplexity" else self.max_drop)

    def describe(self) -> str:
        if self.metric == "perplexity":
            return f"perplexity at most {self.max_ppl_ratio:g}x the teacher's"
        unit = "% of the teacher's accuracy" if self.relative else " accuracy points"
        return f"at most {self.max_drop:g}{unit} below the teacher"


@dataclass
class Target:
    """Where and how the chosen model will run: the figures are measured at this cell."""

    device: str = "cpu"
    batch_size: int = 1
    seq_length: int = 128  # tokens per text at which latency is timed
    threads: int | None = None  # None: the physical cores

    def __post_init__(self):
        if self.device not in DEVICES:
            raise LeanError(f"--device must be auto, cpu or cuda, got '{self.device}'")
        for name in ("batch_size", "seq_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise LeanError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.seq_length < 8:
            raise LeanError(f"--seq-length must be at least 8 tokens, got {self.seq_length}")
        check_limit("--batch-size", self.batch_size, MAX_BATCH_SIZE, "time a smaller batch")
        check_limit("--seq-length", self.seq_length, MAX_SEQ_LENGTH, "time shorter texts")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise LeanError(f"--threads must be at least 1, got {self.threads!r}")


@dataclass
class OptimizeConfig:
    model: str  # a teacher directory, or a base model fine-tuned first on `task`
    output: str
    budget: Budget
    task: str | None = None  # None: the task recorded in the teacher's lean.json
    text_column: str | None = None
    label_column: str | None = None
    split_seed: int = 42
    target: Target = field(default_factory=Target)
    objective: str = "latency"
    time_budget: float | str | None = None  # seconds (or '30m'); None: until the space is exhausted
    max_trials: int | None = None  # candidates measured in full (the teacher and probes not counted)
    space: str | None = None  # a space YAML file; None: the built-in one of the device
    runs_dir: str = "runs/cache"  # the harness's build cache, shared with `lean bench`
    resume: bool = False  # continue the run in `output`, reusing its finished trials
    overwrite: bool = False

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise LeanError(f"--objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        if isinstance(self.time_budget, str):
            self.time_budget = parse_duration(self.time_budget)
        elif self.time_budget is not None and (not math.isfinite(self.time_budget) or self.time_budget <= 0):
            raise LeanError(f"--time-budget must be a positive duration such as 30m, got {self.time_budget}")
        if self.max_trials is not None and self.max_trials < 1:
            raise LeanError(f"--max-trials must be at least 1, got {self.max_trials}")
        if self.resume and self.overwrite:
            raise LeanError("--resume continues a run and --overwrite replaces it: pass one")
        check_target_fits(self.target, self.model)


def check_target_fits(target: Target, model: str) -> None:
    """--seq-length within the positions the model has (read from a local config.json): every latency
    cell of a longer one is skipped, so the whole search would measure nothing."""
    from lean.models import resolve_model

    try:
        config = Path(resolve_model(model)) / "config.json"
    except LeanError:
        return  # a missing model is reported where the run loads it
    if not config.is_file():
        return  # a Hub id: from_pretrained reads its config later
    values = json.loads(config.read_bytes().decode("utf-8"))  # resolve_model checked it is a JSON object
    positions = values.get("max_position_embeddings") or values.get("n_positions")
    if isinstance(positions, int) and target.seq_length > positions:
        raise LeanError(f"--seq-length {target.seq_length} is above the limit of {positions} tokens that "
                        f"'{model}' takes (its positions): pass at most {positions}")
