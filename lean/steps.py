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
from typing import Any, Callable, Iterable, Iterator

from lean import __version__
from lean.errors import LeanError
from lean.locks import output_lock
from lean.models import environment, manifest_hash, resolve_model, write_manifest
from lean.outputs import remove_output, seal, why_not_replaceable

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


def step_inputs(config: Any) -> list[str]:
    """The local paths a step's config reads besides its source: the task file or directory, a distill student."""
    values = config_dict(config)
    return [str(values[k]) for k in ("task", "student") if isinstance(values.get(k), (str, os.PathLike))]


def _local_inputs(source, inputs) -> list[tuple[str, str, Path]]:
    """(what, as given, resolved path) of every input of the run that exists on this machine."""
    found = []
    source_dir = _source_dir(source)
    if source_dir is not None:
        found.append(("the input model", str(source), source_dir))
    for given in inputs:
        if given is not None and not str(given).startswith("init:") and Path(str(given)).expanduser().exists():
            found.append(("the input", str(given), Path(str(given)).expanduser().resolve()))
    return found


def check_target(path: str | os.PathLike, what: str, option: str, source: str | os.PathLike | None = None,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """The path to write for `path` (a symlink resolved), refused with one line when writing there could lose data:
    under a file, the working directory or an ancestor of it, an input of the run (the model `source`, a task
    file, a student, a suite, a space) or an ancestor of one."""
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
    for label, name, input_path in _local_inputs(source, inputs):
        if _covers(real, input_path):
            raise LeanError(f"{what} '{given}' is {label} '{name}' or one of its parents: "
                            f"choose a new directory for {option}")
    if real.exists() and not real.is_dir():
        raise LeanError(f"{what} '{given}' exists and is a file: choose another {option}")
    return real if given.is_symlink() else given


def check_output_dir(out: str | os.PathLike, overwrite: bool = False, source: str | os.PathLike | None = None,
                     inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """The directory a step or bench run writes, checked before any work (a symlinked -o is resolved first).

    An existing non-empty directory needs --overwrite, and --overwrite replaces only a directory lean can
    prove it wrote, holding nothing else (lean.outputs); never an input of the run. See docs/security.md."""
    inputs = list(inputs)
    out = check_target(out, "output", "-o", source, inputs)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise LeanError(f"output directory '{out}' exists and is not empty: choose another -o or pass --overwrite")
        why = why_not_replaceable(out)
        if why is not None:
            raise LeanError(f"--overwrite replaces only a directory lean wrote, and '{out}' {why}")
    return out


def _directory_mode() -> int:
    """The mode a plain mkdir would give (0777 less the umask): mkdtemp makes 0700, too strict for an output."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


class SwapRefused(LeanError):
    """The output changed while the step ran: the finished result is kept beside it instead."""


def _swap(tmp: Path, out: Path, overwrite: bool) -> None:
    """Put `tmp` in place of `out`, checking `out` again now: it may have appeared or changed while lean worked."""
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()  # empty: nothing to lose
    elif out.exists() or out.is_symlink():
        why = "exists and is not empty (it appeared while lean ran)" if not overwrite else why_not_replaceable(out)
        if why is None:
            try:
                remove_output(out)
            except LeanError as e:
                why = str(e).removeprefix(f"'{out}' ")
        if why is not None:
            raise SwapRefused(f"output '{out}' {why}; nothing was replaced, and the new result is in '{tmp}'")
    os.replace(tmp, out)


@contextmanager
def atomic_dir(out: Path, overwrite: bool = False, record: str | None = "lean.json") -> Iterator[Path]:
    """A temp dir beside `out` to write into, marked as lean's (lean.outputs.seal) and renamed into place when
    the block ends; removed instead when the block raises or is interrupted, so `out` is never half-written.
    `out` is checked again at the swap: what is there then is replaced only with `overwrite` and only when
    lean can prove it wrote it; otherwise the result stays in the temp dir and the swap is refused.
    `record`: the file that carries the marker's id (None: a copy whose lean.json must stay as it is)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise LeanError(f"cannot create output '{out}': {e.strerror or e}: choose a writable -o") from None
    try:
        yield tmp
        if tmp.exists():  # (a block may remove it: nothing to put in place)
            os.chmod(tmp, _directory_mode())
            seal(tmp, record)
            _swap(tmp, out, overwrite)
    except SwapRefused:
        raise
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
    inputs = step_inputs(config)
    out = check_output_dir(out, overwrite, source, inputs)
    fn = fn or step_function(name)
    with output_lock(out) if is_rank_zero() else nullcontext():
        out = check_output_dir(out, overwrite, source, inputs)  # again under the lock: a run may have finished meanwhile
        with atomic_dir(out, overwrite) as tmp:
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
