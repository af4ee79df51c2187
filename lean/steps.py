"""The step registry: name -> function (input dir, config) -> output dir.

Every step writes into a temporary sibling directory and renames it into place only when it
succeeded, so a failed step leaves nothing behind that looks finished. The manifest (lean.json)
records the step, its full config, the parent directory and the parent's manifest hash, the
environment and the wall time; `config_hash` identifies a chain of steps for caching.

Entries name their module lazily ("lean.finetune:run") so `lean --help` imports nothing heavy.
A step function has the signature `run(source: str, config, out_dir: Path) -> dict`; the dict it
returns (task, metrics, anything else) is merged into the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from lean.errors import LeanError
from lean.models import environment, manifest_hash, resolve_model, write_manifest

# name -> ("module:step function", "module:config dataclass")
STEPS: dict[str, tuple[str, str]] = {
    "finetune": ("lean.finetune:run", "lean.finetune:FinetuneConfig"),
    "distill": ("lean.distill:run", "lean.distill:DistillConfig"),
    "quantize": ("lean.quantize:run", "lean.quantize:config_from_dict"),
    "export": ("lean.export:run", "lean.export:ExportConfig"),
}


def register_step(name: str, function: str, config: str) -> None:
    """Add a step: `function` and `config` are "module:attr" (a step function, a config class or factory)."""
    STEPS[name] = (function, config)


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def step_function(name: str) -> Callable[..., dict]:
    if name not in STEPS:
        raise LeanError(f"unknown step '{name}': known steps are {', '.join(sorted(STEPS))}")
    return _resolve(STEPS[name][0])


def step_config(name: str, values: dict[str, Any] | None = None) -> Any:
    """Build a step's config from a plain dict (a suite's YAML), rejecting unknown keys by name."""
    if name not in STEPS:
        raise LeanError(f"unknown step '{name}': known steps are {', '.join(sorted(STEPS))}")
    factory = _resolve(STEPS[name][1])
    values = dict(values or {})
    if dataclasses.is_dataclass(factory):
        known = {f.name for f in dataclasses.fields(factory)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LeanError(f"step '{name}' has no option {', '.join(unknown)}; its options are: {', '.join(sorted(known))}")
    return factory(**values)


def config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config)


def config_hash(step: str, config: Any, parent: str | None = None) -> str:
    """A short stable hash of a step, its config and its parent (its manifest hash, or its name)."""
    payload = json.dumps({"step": step, "config": config_dict(config), "parent": parent}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def check_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty output directory unless overwrite is set (checked before any work)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise LeanError(f"output '{out}' exists and is a file: choose another -o")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LeanError(f"output directory '{out}' exists and is not empty: choose another -o or pass --overwrite")
    return out


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A temp dir beside `out` to write into, renamed into place (replacing `out`) when the block ends;
    removed instead when the block raises or is interrupted, so `out` is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if tmp.exists():  # (a block may remove it: nothing to put in place)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run_step(name: str, source: str, config: Any, out: str | os.PathLike, overwrite: bool = False,
             fn: Callable[..., dict] | None = None) -> Path:
    """Run a step atomically: write into a temp dir, add the manifest, rename into place."""
    out = check_output_dir(out, overwrite)
    fn = fn or step_function(name)
    with atomic_dir(out) as tmp:
        start = time.perf_counter()
        extra = fn(source, config, tmp) or {}
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate launch only rank 0 writes
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        source_path = source if source.startswith("init:") or Path(source).is_dir() else resolve_model(source)
        manifest = {
            "lean_version": "0.1.0",
            "step": name,
            "config": config_dict(config),
            "config_hash": config_hash(name, config, manifest_hash(source_path) if Path(source_path).is_dir() else str(source)),
            "parent": {"path": str(source), "resolved": str(source_path), "manifest_hash": manifest_hash(source_path) if Path(source_path).is_dir() else None},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": round(time.perf_counter() - start, 2),
            **extra,
        }
        manifest.setdefault("environment", environment())
        write_manifest(tmp, manifest)
    return out
