"""Build chains: each step's directory made once, in a subprocess, cached by config hash.

    chains = Chains(suite, runs_dir, logs, status=print, build_timeout_s=None)
    model_dir, key = chains.build(source, source_key(source), variant.steps, "variant 'x'", "x", records)

A variant is a chain of steps from the teacher (itself a chain from the base). Each step's directory
is `RUNS_DIR/<step>-<hash>`, where the hash (lean.steps.config_hash) covers the step, its full config
and its parent's hash, so the teacher is built once and reused by every variant and every later run.
A kind with a fit (lean.bench.kinds) is fitted once into `RUNS_DIR/<kind>-<hash>`, the hash covering
its config and the task. Each build runs in `python -m lean.bench.build` and holds a lock on its
directory, so two runs sharing a cache never build one entry at once. Parent side of lean.bench.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any, Callable

from lean.bench import protocol
from lean.bench.inputs import read_manifest_checked
from lean.bench.kinds import VariantKind
from lean.bench.launcher import child_env, crash_text, run_child
from lean.bench.progress import training_progress
from lean.bench.suite import Suite, build_step_config, step_options
from lean.errors import LeanError


class BuildError(Exception):
    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status, self.error = status, error


def safe_name(name: str) -> str:
    """A variant name as a file name."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def source_key(spec: str) -> str:
    """What a chain's first step hashes as its parent: the manifest hash of a lean directory, else a
    fingerprint of config.json and the weight files' names and sizes, else the spec itself (a Hub id)."""
    from lean.models import manifest_hash, resolve_model

    if spec.startswith("init:"):  # a teacher trained from scratch (suite base: null)
        return spec
    path = Path(resolve_model(spec))
    if not path.is_dir():
        return spec
    if manifest_hash(path):
        return f"manifest:{manifest_hash(path)}"
    digest = hashlib.sha256()
    config = path / "config.json"
    digest.update(config.read_bytes() if config.is_file() else b"")
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".safetensors", ".onnx", ".bin"):
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return f"dir:{digest.hexdigest()[:16]}"


def trained_max_length(path: str | Path, default: int = 128) -> int:
    """The max_length a directory's chain was trained or exported at (walking parents), else `default`.
    An unreadable lean.json is a LeanError (the variant's error), never a crash."""
    for _ in range(16):
        manifest = read_manifest_checked(path)
        if not manifest:
            break
        config, inherited = manifest.get("config"), manifest.get("inherited")
        used = inherited.get("max_length") if isinstance(inherited, dict) else None  # lean.lineage's record
        value = ((used.get("value") if isinstance(used, dict) else None) or manifest.get("max_length")
                 or (config.get("max_length") if isinstance(config, dict) else None))
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        parent = manifest.get("parent")
        parent = parent.get("resolved") if isinstance(parent, dict) else None
        if not isinstance(parent, str) or not parent or not Path(parent).is_dir():
            break
        path = parent
    return default


class Chains:
    """Builds chains of steps with a directory per (step, config hash), remembering outcomes within a run."""

    def __init__(self, suite: Suite, runs_dir: Path, logs: Path, status: Callable[[str], None], build_timeout_s):
        self.suite, self.runs_dir, self.logs, self.status = suite, runs_dir, logs, status
        self.build_timeout_s = build_timeout_s
        self.done: dict[str, Path | BuildError] = {}  # chain hash -> directory, or the failure
        self.builds = 0  # steps actually built (not cached) in this run

    def build(self, source: str, key: str, steps, where: str, variant: str, records: list[dict]) -> tuple[Path, str]:
        """Build `steps` on `source` (whose chain key is `key`); append a record per step. -> (dir, key)."""
        from lean.steps import config_hash

        path = Path(source)
        for i, step in enumerate(steps):
            try:
                config = build_step_config(self.suite, step, f"{where} step {i + 1} ({step.name})")
            except (ImportError, AttributeError) as e:
                raise BuildError("failed", f"step '{step.name}' is not available: {type(e).__name__}: {e}") from None
            except LeanError as e:
                raise BuildError("failed", str(e)) from None
            key = config_hash(step.name, config, key)
            path = self._cached(step.name, config, key, records, lambda out: self._build_one(
                step, config, str(path), out, variant, f"{i + 1}/{len(steps)}"))
        return path, key

    def fitted(self, kind: VariantKind, task: dict[str, Any], variant: str, records: list[dict]) -> Path:
        """The directory of a kind with a fit, fitted on `task` (a measuring spec's task), from the cache
        when there; appends its record to `records` like a step's."""
        from lean.steps import config_dict, config_hash

        config = kind.config()
        key = config_hash(kind.name, config, "task:" + json.dumps(task, sort_keys=True))
        return self._cached(kind.name, config, key, records, lambda out: self._run_build(
            kind.name, {"task": task, "options": config_dict(config)}, out, variant,
            f"fit {kind.name} on the train split"), verb="fitted")

    def _cached(self, name: str, config, key: str, records: list[dict], build: Callable[[Path], None],
                verb: str = "built") -> Path:
        """RUNS_DIR/<name>-<key>: from the cache when it is there, else made by `build(out)` under the
        entry's lock; a failure is remembered for the rest of the run. Appends the record {step, config,
        config_hash, dir, cached, build_s} to `records`."""
        from lean.locks import output_lock
        from lean.steps import config_dict

        out = self.runs_dir / f"{name}-{key}"
        record = {"step": name, "config": config_dict(config), "config_hash": key, "dir": str(out),
                  "cached": True, "build_s": 0.0}
        records.append(record)
        known = self.done.get(key)
        if isinstance(known, BuildError):
            raise BuildError(known.status, f"{name} ({verb} for an earlier variant) failed: {known.error}")
        if (out / "lean.json").is_file():
            return self._checked(key, out)
        record["cached"] = False
        started = time.perf_counter()
        try:
            with output_lock(out, "runs-cache entry"):
                build(out)
        except LeanError as e:  # the entry is being built by another run
            self.done[key] = BuildError("failed", str(e))
            raise self.done[key] from None
        except BuildError as e:
            self.done[key] = e
            raise
        finally:
            record["build_s"] = round(time.perf_counter() - started, 2)
        self.builds += 1
        self.done[key] = out
        return out

    def _checked(self, key: str, out: Path) -> Path:
        """A cached entry whose lean.json reads back; else that is the variant's error (remembered)."""
        try:
            read_manifest_checked(out)
        except LeanError as e:
            self.done[key] = BuildError("failed", f"the cached {e}")
            raise self.done[key] from None
        return out

    def _build_one(self, step, config, source: str, out: Path, variant: str, position: str) -> None:
        from lean.steps import STEPS

        options = step_options(self.suite, step)  # the dict the parent built `config` from
        self._run_build(step.name, {"entry": list(STEPS[step.name]), "options": options, "source": source}, out,
                        variant, f"build {step.name} ({position})")

    def _run_build(self, name: str, spec: dict[str, Any], out: Path, variant: str, label: str) -> None:
        """Build `out` in a subprocess (lean.bench.build) from `spec`; a failure, a crash or the build
        timeout raises BuildError."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        safe = safe_name(variant)
        spec_file = self.logs / f"{safe}.{name}.build.json"
        result_file = self.logs / f"{safe}.{name}.build-result.json"
        result_file.unlink(missing_ok=True)
        spec_file.write_text(json.dumps({"step": name, **spec, "out": str(out), "result": str(result_file)},
                                        default=str))
        self.status(label)
        first: list[tuple[int, float]] = []  # (step, time) of the first progress line

        def on_line(line: str) -> None:
            progress = protocol.parse_progress(line)
            if progress is not None:
                done, now = progress[0], time.monotonic()
                first[:] = first or [(done, now)]
                self.status(training_progress(label, done, progress[1], first[0], now))

        log = self.logs / f"{safe}.{name}.build.log"
        code, timed_out = run_child(["-m", "lean.bench.build", str(spec_file)], log, self.build_timeout_s, on_line,
                                    child_env(None))
        if timed_out:
            raise BuildError("timeout", f"building {name} exceeded the {self.build_timeout_s:g} s build timeout")
        if result_file.is_file():
            result = json.loads(result_file.read_text())
            if result["status"] != "ok":
                raise BuildError(result["status"], f"{name} failed: {result['error']}")
        elif code != 0:
            status = "oom" if code == -signal.SIGKILL else "failed"
            raise BuildError(status, f"{name}: {crash_text(code, log)}")
        if not (out / "lean.json").is_file():
            raise BuildError("failed", f"{name} finished but wrote no {out}/lean.json")
