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
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from lean import __version__
from lean.errors import LeanError
from lean.locks import output_lock
from lean.models import MANIFEST, environment, manifest_hash, resolve_model, write_manifest

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


# A directory holding either of these was written by lean: --overwrite may replace it, nothing else.
RUN_FILES = ("results.json", "report.md")  # a finished `lean bench` run


def is_lean_output(path: str | os.PathLike) -> bool:
    """True when `path` is a directory lean wrote: it holds lean.json, or a bench run's results.json and report.md."""
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST).is_file() or all((path / name).is_file() for name in RUN_FILES))


def _covers(outer: Path, inner: Path) -> bool:
    """`outer` is `inner` or one of its ancestors (both resolved): replacing `outer` would remove `inner`."""
    return outer == inner or outer in inner.parents


def _source_dir(source: str | os.PathLike | None) -> Path | None:
    """The input model's directory, resolved, when it is local (None for a Hub id or a from-scratch run)."""
    if source is None or str(source).startswith("init:"):
        return None
    try:
        found = Path(resolve_model(source))
    except LeanError:
        found = Path(str(source)).expanduser()
    return found.resolve() if found.is_dir() else None


def check_target(path: str | os.PathLike, what: str, option: str, source: str | os.PathLike | None = None) -> Path:
    """The path to write for `path` (a symlink resolved), refused with one line when writing there could lose data:
    under a file, the working directory or an ancestor of it, the input model or an ancestor of it."""
    given = Path(path).expanduser()
    real = given.resolve()
    for parent in real.parents:  # the nearest existing ancestor must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise LeanError(f"{what} '{given}' is under '{parent}', which is a file: choose another {option}")
            break
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory was removed: nothing of it to protect
        cwd = None
    if cwd is not None and _covers(real, cwd):
        raise LeanError(f"{what} '{given}' is the working directory or one of its parents: "
                        f"choose a new directory for {option}")
    source_dir = _source_dir(source)
    if source_dir is not None and _covers(real, source_dir):
        raise LeanError(f"{what} '{given}' is the input model '{source}' or one of its parents: "
                        f"choose a new directory for {option}")
    if real.exists() and not real.is_dir():
        raise LeanError(f"{what} '{given}' exists and is a file: choose another {option}")
    return real if given.is_symlink() else given


def check_output_dir(out: str | os.PathLike, overwrite: bool = False, source: str | os.PathLike | None = None) -> Path:
    """The directory a step or bench run writes, checked before any work (a symlinked -o is resolved first).

    An existing non-empty directory needs --overwrite, and --overwrite replaces only what lean wrote
    (`is_lean_output`); see docs/security.md."""
    out = check_target(out, "output", "-o", source)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise LeanError(f"output directory '{out}' exists and is not empty: choose another -o or pass --overwrite")
        if not is_lean_output(out):
            raise LeanError(f"--overwrite replaces only a directory lean wrote (one holding {MANIFEST}, or a bench "
                            f"run's {' and '.join(RUN_FILES)}), and '{out}' is not one: choose another -o")
    return out


def _directory_mode() -> int:
    """The mode a plain mkdir would give (0777 less the umask): mkdtemp makes 0700, too strict for an output."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A temp dir beside `out` to write into, renamed into place (replacing `out`) when the block ends;
    removed instead when the block raises or is interrupted, so `out` is never half-written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise LeanError(f"cannot create output '{out}': {e.strerror or e}: choose a writable -o") from None
    try:
        yield tmp
        if tmp.exists():  # (a block may remove it: nothing to put in place)
            os.chmod(tmp, _directory_mode())
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_rank_zero() -> bool:
    """Under torchrun / accelerate launch every process runs the step; only rank 0 writes and locks."""
    return int(os.environ.get("RANK", "0")) == 0


def run_step(name: str, source: str, config: Any, out: str | os.PathLike, overwrite: bool = False,
             fn: Callable[..., dict] | None = None) -> Path:
    """Run a step atomically: write into a temp dir, add the manifest, rename into place.

    The output is checked before any work and locked for the whole step, so a second run on the same
    output fails at once instead of racing this one."""
    out = check_output_dir(out, overwrite, source)
    fn = fn or step_function(name)
    with output_lock(out) if is_rank_zero() else nullcontext():
        out = check_output_dir(out, overwrite, source)  # again under the lock: a run may have finished meanwhile
        with atomic_dir(out) as tmp:
            start = time.perf_counter()
            extra = fn(source, config, tmp) or {}
            if not is_rank_zero():
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            write_manifest(tmp, _manifest(name, source, config, start, extra))
    return out


def _manifest(name: str, source: str, config: Any, start: float, extra: dict) -> dict[str, Any]:
    source_path = source if source.startswith("init:") or Path(source).is_dir() else resolve_model(source)
    is_dir = Path(source_path).is_dir()
    parent_hash = manifest_hash(source_path) if is_dir else None
    manifest = {
        "lean_version": __version__,
        "step": name,
        "config": config_dict(config),
        "config_hash": config_hash(name, config, parent_hash if is_dir else str(source)),
        "parent": {"path": str(source), "resolved": str(source_path), "manifest_hash": parent_hash},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - start, 2),
        **extra,
    }
    manifest.setdefault("environment", environment())
    return manifest
