"""Measuring a candidate through the harness: a chain becomes a small suite, `lean bench` runs it.

    measure = BenchMeasure(task, base="minilm-l6", teacher=[{"finetune": {...}}], target=Target(), ...)
    figures = measure(candidate, "full")   # validation + test quality, latency, memory, size

A full measurement is one suite of two variants over the same chain (built once, from the harness's
cache in RUNS_DIR when an earlier run or `lean bench` built it): the first scores the validation split
(`measure: {split: validation}`) and times the target's cell, the second scores the test split only.
A probe is one variant with quality off. Each suite's run directory is kept under RUN/bench/.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lean.errors import LeanError
from lean.optimize.config import Target
from lean.optimize.space import MODEL, Candidate
from lean.optimize.trials import Figures

VALIDATION, TEST = "candidate", "candidate@test"  # the variants of a full measurement's suite


def split_supported() -> bool:
    """Whether this lean.bench scores the split a suite names (`measure: {split: validation}`)."""
    from lean.bench.suite import MeasureConfig

    return "split" in {f.name for f in dataclasses.fields(MeasureConfig)}


@dataclass
class BenchMeasure:
    task: dict[str, Any]  # {spec, text_column, label_column, split_seed}
    base: str  # the base model, or the teacher directory itself
    teacher: list[dict[str, Any]] | str  # steps from the base, or the teacher directory
    target: Target
    runs_dir: Path  # the harness's build cache
    output: Path  # RUN/bench: one run directory per measurement
    measure: dict[str, Any] = dataclasses.field(default_factory=dict)  # the space's measure options

    # for one cell: 3 warm-up calls, then 20 timed ones, or fewer once they add up to 6 s (but at least 5)
    DEFAULTS = {"warmup": 3, "repeats": 20, "min_repeats": 5, "max_cell_s": 6.0, "timeout_s": 900.0,
                # one variant is timed per suite: there is nothing to interleave it with
                "interleave": False, "generation": False}

    def suite_data(self, candidate: Candidate, mode: str) -> dict[str, Any]:
        """The suite (as its YAML would read) that measures `candidate`."""
        measure = {**self.DEFAULTS, **self.measure, "batch_sizes": [self.target.batch_size],
                   "seq_lengths": [self.target.seq_length], "threads": self.target.threads, "split": "validation"}
        variant = {"steps": candidate.chain(), "load": dict(candidate.load), "requires": list(candidate.requires)}
        if candidate.kind != MODEL:  # fitted on the task's train split (tfidf-logreg): no steps, no load options
            variant = {"kind": candidate.kind, "requires": list(candidate.requires)}
        variants = {VALIDATION: variant}
        if mode == "probe":
            measure["quality"] = False
        else:
            variants[TEST] = {**variant, "measure": {"split": "test", "latency": False}}
        return {"name": f"optimize-{candidate.name}", "task": self.task["spec"],
                "text_column": self.task.get("text_column"), "label_column": self.task.get("label_column"),
                "split_seed": self.task.get("split_seed", 42), "base": self.base, "teacher": self.teacher,
                "baseline": VALIDATION, "measure": measure, "variants": variants}

    def _run_dir(self, candidate: Candidate, mode: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in candidate.name.removesuffix("@probe"))
        existing = len(list(self.output.glob("*"))) if self.output.is_dir() else 0
        return self.output / f"{existing + 1:03d}-{safe}{'-probe' if mode == 'probe' else ''}"

    def __call__(self, candidate: Candidate, mode: str) -> Figures:
        from rich.console import Console

        from lean.bench import BenchOptions, parse_suite, run_bench

        if not split_supported():  # (optimize checks this before the run; here for direct callers)
            raise LeanError("this lean.bench cannot score the validation split (suite key measure.split), and lean "
                            "optimize chooses on validation only: update lean")
        suite = parse_suite(self.suite_data(candidate, mode), f"optimize:{candidate.name}")
        out = self._run_dir(candidate, mode)
        out.parent.mkdir(parents=True, exist_ok=True)
        # the bench run owns `out` (--overwrite replaces only a finished bench run there); its log sits beside it
        options = BenchOptions(output=out, runs_dir=self.runs_dir, device=self.target.device,
                               threads=self.target.threads, overwrite=True, quiet=True)
        with out.with_name(out.name + ".log").open("w") as log:
            try:
                results = run_bench(suite, options, console=Console(file=log, width=160))
            except LeanError:
                raise
            except Exception as e:  # the harness itself broke on this chain: the candidate's row, not the run
                return Figures(status="failed", error=f"{type(e).__name__}: {e}")
        return figures_from_results(results, self.target)


def _row(results: dict[str, Any], name: str) -> dict[str, Any]:
    return next((r for r in results.get("variants", []) if r.get("name") == name), {})


def _quality(row: dict[str, Any], split: str) -> dict[str, Any]:
    quality = row.get("quality") or {}
    if not quality:
        return {}
    if quality.get("split", "test") != split:
        raise LeanError(f"lean bench scored the {quality.get('split', 'test')} split where lean optimize asked for "
                        f"the {split} split (measure.split): update lean")
    return {k: quality[k] for k in ("accuracy", "macro_f1", "perplexity", "n", "split") if k in quality}


def figures_from_results(results: dict[str, Any], target: Target) -> Figures:
    """A measurement's figures from its results.json (schema: docs/bench.md)."""
    row, test = _row(results, VALIDATION), _row(results, TEST)
    chain = row.get("chain") or []
    built = [r for r in chain if not r.get("cached")]
    figures = Figures(status=row.get("status", "failed"), error=row.get("error"), model_dir=row.get("model_dir"),
                      build_s=round(sum(float(r.get("build_s") or 0) for r in built), 2), steps_built=len(built))
    if figures.status != "ok":
        return figures
    figures.validation = _quality(row, "validation")
    if test.get("status") == "ok":
        figures.test = _quality(test, "test")
    for cell in row.get("latency") or []:
        if cell.get("batch_size") == target.batch_size and cell.get("seq_length") == target.seq_length:
            figures.latency_ms = cell.get("median_ms")
            figures.latency_unreliable = cell.get("unreliable")
            figures.throughput_sps = cell.get("throughput_sps")
    memory = row.get("memory") or {}
    figures.peak_memory_mb = memory.get("cuda_peak_mb") if target.device == "cuda" else memory.get("peak_rss_mb")
    figures.weights_bytes = (row.get("size") or {}).get("weights_bytes")
    return figures


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)
