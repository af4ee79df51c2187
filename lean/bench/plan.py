"""What a run does before it measures: which variants, whether each can run here, its files.

    names = select_variants(suite, ["int8-dynamic"])      # the baseline first, then the chosen ones
    missing_requirement(suite.variants["fp16"], "cpu")     # "needs CUDA: ..."

Parent side of lean.bench (used by the runner, each VariantRun and `lean bench --list`).
"""

from __future__ import annotations

import importlib.util
from datetime import datetime
from pathlib import Path
from typing import Any

from lean.bench.chains import safe_name
from lean.bench.kinds import KINDS
from lean.bench.launcher import Child, child_env
from lean.bench.suite import STARTS, Suite, Variant
from lean.errors import LeanError


def missing_requirement(variant: Variant, device: str) -> str | None:
    """Why this machine cannot run the variant, or None."""
    for need in variant.requires:
        if need == "cuda":
            if not device.startswith("cuda"):
                return "needs CUDA: measuring on --device cpu" if _has_cuda() else \
                    "needs CUDA: this machine has no CUDA GPU"
            continue
        try:
            found = importlib.util.find_spec(need.replace("-", "_")) is not None
        except (ImportError, ValueError):  # a dotted name whose parent package is missing
            found = False
        if not found:
            return f"needs the package {need} (not installed)"
    return None


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def default_output(suite: Suite) -> Path:
    return Path("runs/bench") / f"{safe_name(suite.name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def select_variants(suite: Suite, names: list[str] | None) -> list[str]:
    """The variants to run, baseline first (ratios need it), in suite order."""
    if names:
        unknown = [n for n in names if n not in suite.variants]
        if unknown:
            raise LeanError(f"unknown variant '{unknown[0]}' in --variants; "
                            f"this suite has: {', '.join(suite.variants)}")
        chosen = set(names)
    else:
        chosen = set(suite.variants)
    chosen.add(suite.baseline)
    return [suite.baseline] + [n for n in suite.variants if n in chosen and n != suite.baseline]


def list_lines(suite: Suite, names: list[str] | None, device: str, trust_remote_code: bool = False) -> list[str]:
    """`lean bench --list`: a line per selected variant (kind, chain, whether it runs here), after a line
    saying so when remote code is enabled."""
    from lean.models import resolve_device

    dev = resolve_device(device)
    lines = ["remote code: ON (--trust-remote-code): Python shipped in model directories will run"] \
        if trust_remote_code else []
    for name in select_variants(suite, names):
        v = suite.variants[name]
        start = "" if not KINDS[v.kind].takes_steps else ("dir" if v.start not in STARTS else v.start)
        steps = " > ".join([start] * bool(start) + [s.name for s in v.steps])
        why = missing_requirement(v, dev)
        lines.append(f"{name:24s} {v.kind:14s} {steps:30s} {'skip: ' + why if why else 'runs'}")
    return lines


def preload_kind(variant: Variant) -> str:
    """Which backend's libraries a variant's measuring subprocess can import before its model exists
    (lean.bench.kinds.BACKENDS): an export last in its chain makes it an ONNX row."""
    if KINDS[variant.kind].backend is not None:
        return variant.kind
    if variant.steps:
        return "onnx" if variant.steps[-1].name == "export" else "torch"
    if variant.start not in STARTS and (Path(variant.start) / "model.onnx").is_file():
        return "onnx"
    return "torch"


def measure_files(logs: Path, variant: Variant) -> tuple[Path, Path, Path]:
    """A variant's measuring spec, result and log files."""
    safe = safe_name(variant.name)
    return logs / f"{safe}.measure.json", logs / f"{safe}.result.json", logs / f"{safe}.measure.log"


def task_spec(suite: Suite) -> dict[str, Any]:
    """The task as a measuring subprocess loads it (its spec's "task", and TASK.json of start_early)."""
    return {"spec": suite.task, "text_column": suite.text_column, "label_column": suite.label_column,
            "split_seed": suite.split_seed}


def start_early(variant: Variant, threads: int, logs: Path) -> Child:
    """The variant's measuring subprocess, started before its turn (`--wait`): it imports its libraries
    and loads the task (logs/task.json, written by run_bench) while the previous variant is scored,
    then waits for GO (see lean.bench.variant.VariantRun)."""
    spec_file, result_file, log = measure_files(logs, variant)
    args = ["-m", "lean.bench.worker", str(spec_file), str(result_file), "--wait", preload_kind(variant),
            str(logs / "task.json")]
    return Child(args, log, child_env(threads, variant.measure.reuse_memory), lambda line: None)
