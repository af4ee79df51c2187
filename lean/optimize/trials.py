"""Trials: what one measurement of a candidate found, and the run's store of them (trials.jsonl).

Each finished trial is appended to RUN/trials.jsonl at once and flushed, so Ctrl-C, a crash or a kill
keeps every finished trial, and `lean optimize --resume` reads them back instead of measuring again.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lean.errors import LeanError

MEASURED = ("ok", "failed", "timeout", "oom")  # a measurement that happened: never repeated on resume
KINDS = ("reference", "candidate", "probe")


@dataclass
class Figures:
    """What the measure function returns for one chain (lean.optimize.adapter measures through lean bench)."""

    status: str = "ok"  # ok | failed | timeout | oom | skipped
    error: str | None = None
    validation: dict[str, Any] = field(default_factory=dict)  # {accuracy, macro_f1, n} or {perplexity}
    test: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None  # median at the target's batch size and sequence length
    # why that cell's rounds do not support its figures (lean.bench.reliability); None: they do
    latency_unreliable: str | None = None
    throughput_sps: float | None = None
    peak_memory_mb: float | None = None
    weights_bytes: int | None = None
    build_s: float = 0.0  # building the chain's steps (0 when every step came from the cache)
    steps_built: int = 0
    model_dir: str | None = None


@dataclass
class Trial(Figures):
    name: str = ""
    kind: str = "candidate"  # reference | candidate | probe
    key: str = ""  # Candidate.key(): what was measured
    chain: list[dict[str, Any]] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why a candidate was pruned or skipped
    loss: float | None = None  # validation loss against the teacher, in the budget's unit
    test_loss: float | None = None  # the same on test: reported, never used to choose
    passed: bool | None = None  # within the budget on validation
    wall_s: float = 0.0
    resumed: bool = False  # read back from an earlier run of the same directory

    @classmethod
    def of(cls, figures: Figures, **values) -> "Trial":
        return cls(**dataclasses.asdict(figures), **values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("resumed")
        return out


# the JSON types of a trial's fields, as trials.jsonl holds them (None is always allowed but for these)
_TRIAL_TYPES = {"number": ("latency_ms", "throughput_sps", "peak_memory_mb", "weights_bytes", "build_s",
                           "steps_built", "loss", "test_loss", "wall_s"),
                "string": ("status", "error", "latency_unreliable", "model_dir", "name", "key", "reason"),
                "object": ("validation", "test", "load"), "list": ("chain",), "bool": ("passed",)}
_REQUIRED = ("status", "key", "name")


def _check_trial(values: dict[str, Any], where: str) -> None:
    """A trial read back for --resume has its fields' types: a damaged one is one line, not a traceback later."""
    python = {"number": (int, float), "string": (str,), "object": (dict,), "list": (list,), "bool": (bool,)}
    for kind, names in _TRIAL_TYPES.items():
        for name in names:
            value = values.get(name)
            wrong_number = kind == "number" and isinstance(value, bool)
            if (value is None and name in _REQUIRED) or wrong_number or \
                    (value is not None and not isinstance(value, python[kind])):
                shown = {"object": "JSON object", "bool": "true or false"}.get(kind, kind)
                raise LeanError(f"--resume: {where}: \"{name}\" must be {'' if kind == 'bool' else 'a '}{shown}, "
                                f"got {value!r}: the run's "
                                "trials.jsonl is damaged; delete it (or the run) to measure again")


class TrialStore:
    """The trials of a run directory, appended as they finish; the latest line of a (kind, key) wins."""

    def __init__(self, path: Path):
        self.path = path
        self.trials: list[Trial] = []
        known = {f.name for f in dataclasses.fields(Trial)}
        if path.is_file():
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise LeanError(f"--resume: {path} is not UTF-8 text (byte {e.start}): this is not a `lean optimize` "
                                "run directory, or its trials.jsonl is damaged (delete it to measure again)") from None
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    values = json.loads(line)
                except json.JSONDecodeError:  # the last line of a run killed while writing it
                    continue
                if not isinstance(values, dict) or values.get("kind") not in KINDS:
                    raise LeanError(f"{path} line {number} is no trial: this is not a `lean optimize` run directory")
                _check_trial(values, f"{path} line {number}")
                self.trials.append(Trial(**{k: v for k, v in values.items() if k in known}, resumed=True))

    def measured(self, kind: str, key: str) -> Trial | None:
        """The latest finished measurement of this chain, or None."""
        for trial in reversed(self.trials):
            if trial.kind == kind and trial.key == key and trial.status in MEASURED:
                return trial
        return None

    def add(self, trial: Trial) -> Trial:
        self.trials.append(trial)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(trial.to_dict(), default=str) + "\n")
            f.flush()
        return trial
