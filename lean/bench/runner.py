"""The harness: build each variant's chain (cached by config hash), measure it in a fresh subprocess,
write the results after every variant.

    from lean.bench import run_bench, load_suite, BenchOptions
    results = run_bench(load_suite(), BenchOptions(output="runs/bench/default"))

Building: a variant is a chain of steps from the teacher (itself a chain from the base). Each step's
directory is `RUNS_DIR/<step>-<hash>`, where the hash (lean.steps.config_hash) covers the step, its
full config and its parent's hash, so the teacher is built once and reused by every variant and every
later run. A step is built in its own subprocess (`python -m lean.bench.runner build SPEC.json`)
through lean.steps.run_step, so a crash or a timeout marks one row and leaves no half-written dir.
tfidf-logreg is fitted the same way, once, into `RUNS_DIR/tfidf-logreg-<hash>` (lean.bench.classical).

Measuring: `python -m lean.bench.measure` per variant (see measure.py). A failure, a timeout or an
out-of-memory is that variant's row; Ctrl-C stops the running subprocess and leaves every finished
row written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from lean.bench.classical import STEP as CLASSICAL_STEP
from lean.bench.rounds import QUIET_TOLERANCE
from lean.bench.suite import STARTS, Suite, Variant, build_step_config, step_options
from lean.errors import LeanError

STATUSES = ("ok", "failed", "skipped", "timeout", "oom", "interrupted")
TRAINING_STEPS = {"finetune", "distill"}  # steps that run a transformers Trainer (their progress gives an eta)
SCHEMA_VERSION = 1


@dataclass
class BenchOptions:
    output: str | os.PathLike | None = None  # None: runs/bench/<suite>-<timestamp>
    runs_dir: str | os.PathLike = "runs/cache"  # intermediate directories, shared by every run
    variants: list[str] | None = None  # None: all of the suite's variants
    timeout_s: float | None = None  # per variant, overrides the suite's measure.timeout_s
    device: str = "auto"
    threads: int | None = None  # overrides the suite's measure.threads
    overwrite: bool = False
    quiet: bool = False  # no progress display (the per-variant lines still print)
    rigorous: bool = False  # time every latency cell RIGOROUS_FACTOR times as long (steadier ratios, longer run)


# `lean bench --rigorous`: each cell's calls (repeats, min_repeats, max_cell_s) times this, over as many rounds, so
# they spread over three times as long. On a 2-vCPU VM whose cores change speed for seconds to minutes, four
# default warm runs (2:04 to 2:45) agreed on 101 of 120 speedups within 10% pair by pair, and four rigorous
# runs alternated with them (3:52 to 4:07) on 120 of 120 (benchmarks/results/2026-11-30-cpu-default-rigorous-agreement.md).
RIGOROUS_FACTOR = 3


class BuildError(Exception):
    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status, self.error = status, error


# ---- subprocesses ------------------------------------------------------------------------------------

# glibc malloc settings of a measuring subprocess with measure.reuse_memory (see MeasureConfig): no
# mmap-ed blocks (each would be unmapped on free and faulted in again on the next call), no trimming of
# the heap's top, and one arena (so that no thread's arena runs into its 64 MiB limit without mmap).
# Other C libraries ignore them.
REUSE_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_ARENA_MAX": "1"}


def child_env(threads: int | None, reuse_memory: bool = False) -> dict[str, str]:
    # PYTHONSAFEPATH (3.11+): `python -m` must not put the working directory first on sys.path, or a
    # run from a source checkout makes its kernels/ folder the `kernels` package that transformers and
    # bitsandbytes probe for
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    if reuse_memory:
        env.update(REUSE_MEMORY_ENV)
    return env


def stop_child(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGINT first (a step then removes its temp dir), SIGKILL if it has not exited after `grace_s`."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def run_child(args: list[str], log: Path, timeout_s: float | None, on_line: Callable[[str], None],
              env: dict[str, str], tick: Callable[[], None] | None = None) -> tuple[int, bool]:
    """Run `python args...` in its own process group, its output to `log`; lines starting with '@'
    go to `on_line`. Returns (returncode, timed_out); Ctrl-C stops the child and re-raises."""
    child = Child(args, log, env, on_line)
    start, timed_out = time.monotonic(), False
    try:
        while child.proc.poll() is None:
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                timed_out = True
                child.stop()
                break
            if tick:
                tick()
            try:
                child.proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        child.stop()
        raise
    finally:
        child.close()
    return child.proc.returncode, timed_out


def crash_text(returncode: int, log: Path) -> str:
    tail = [l for l in log.read_text(errors="replace").splitlines() if l.strip()][-1:] if log.is_file() else []
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited with status {returncode}"
    return f"the subprocess {how}" + (f"; last output: {tail[0].strip()[:300]}" if tail else "")


class Child:
    """`python args...` in its own process group. '@ready' and '@times ...' lines are replies (a measuring
    subprocess that stays loaded for interleaved timing, lean.bench.measure.serve_latency), other '@'
    lines go to `on_line`, the rest to `log`."""

    TIMEOUT = "timeout"

    def __init__(self, args: list[str], log: Path, env: dict[str, str], on_line: Callable[[str], None]):
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = log.open("w")
        self.proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, bufsize=1,
                                     errors="replace")
        self.replies: queue.Queue = queue.Queue()
        self.on_line = on_line
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(("@ready", "@times")):
                self.replies.put(line.strip())
            elif line.startswith("@"):
                self.on_line(line.strip())
            else:
                self.log_file.write(line)
                self.log_file.flush()
        self.replies.put(None)  # the process closed its output: it ended

    def reply(self, timeout_s: float | None) -> str | None:
        """The next reply line; None once the process has ended; TIMEOUT (after stopping it) past timeout_s."""
        try:
            return self.replies.get(timeout=timeout_s)
        except queue.Empty:
            self.stop()
            return self.TIMEOUT

    def ask(self, line: str, timeout_s: float | None) -> str | None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        return self.reply(timeout_s)

    def end(self) -> None:
        """Say "end" (once): the process writes its result and exits, while the harness goes on."""
        if self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.write("end\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass

    def finish(self, timeout_s: float | None) -> tuple[int, bool]:
        """Say "end" and wait for the process to write its result and exit: (returncode, timed_out)."""
        timed_out = False
        self.end()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop()
        self.close()
        return self.proc.returncode, timed_out

    def stop(self) -> None:
        stop_child(self.proc, grace_s=5.0)

    def close(self) -> None:
        self.reader.join(timeout=5)
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.log_file.close()


# ---- the build step subprocess ------------------------------------------------------------------------

def _report_trainer_progress() -> None:
    """Make every transformers Trainer in this process print '@progress step max_steps' (for the eta)."""
    try:
        import transformers
        from transformers import TrainerCallback
    except ImportError:
        return

    class BenchProgress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                print(f"@progress {state.global_step} {state.max_steps}", flush=True)

    original = transformers.Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(BenchProgress())

    transformers.Trainer.__init__ = init


def build_main(spec_file: str) -> int:
    """Child: run one step through lean.steps.run_step; write {"status", "error"} to spec["result"]."""
    import traceback

    from lean.bench.measure import classify_error, error_text
    from lean.steps import STEPS, register_step, run_step, step_config

    restore_interrupts()
    spec = json.loads(Path(spec_file).read_text())
    result: dict[str, Any] = {"status": "ok"}
    try:
        if spec["step"] == CLASSICAL_STEP:  # tfidf-logreg: fitted on the task, not built from a model
            from lean.bench.classical import TfidfLogregConfig, build_tfidf_logreg

            build_tfidf_logreg(spec["task"], TfidfLogregConfig(**spec["options"]), spec["out"])
        else:
            if tuple(STEPS.get(spec["step"], ())) != tuple(spec["entry"]):
                register_step(spec["step"], *spec["entry"])
            config = step_config(spec["step"], spec["options"])
            if spec["step"] in TRAINING_STEPS:  # importing transformers costs seconds; only trainers report steps
                _report_trainer_progress()
            run_step(spec["step"], spec["source"], config, spec["out"])
    except Exception as e:  # the step's failure is this variant's row; the harness goes on
        traceback.print_exc()
        result = {"status": classify_error(e), "error": error_text(e)}
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


# ---- chains ---------------------------------------------------------------------------------------------

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
    """The max_length a directory's chain was trained or exported at (walking parents), else `default`."""
    from lean.models import read_manifest

    for _ in range(16):
        manifest = read_manifest(path)
        if not manifest:
            break
        value = manifest.get("max_length") or (manifest.get("config") or {}).get("max_length")
        if isinstance(value, int) and value > 0:
            return value
        parent = (manifest.get("parent") or {}).get("resolved")
        if not parent or not Path(parent).is_dir():
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

    def classical(self, task: dict[str, Any], variant: str, records: list[dict]) -> Path:
        """The tfidf-logreg directory fitted on `task` (a measuring spec's task), from the cache when there;
        appends its record to `records` like a step's."""
        from lean.bench.classical import TfidfLogregConfig
        from lean.steps import config_dict, config_hash

        config = TfidfLogregConfig()
        key = config_hash(CLASSICAL_STEP, config, "task:" + json.dumps(task, sort_keys=True))
        return self._cached(CLASSICAL_STEP, config, key, records, lambda out: self._run_build(
            CLASSICAL_STEP, {"task": task, "options": config_dict(config)}, out, variant,
            f"fit {CLASSICAL_STEP} on the train split"), verb="fitted")

    def _cached(self, name: str, config, key: str, records: list[dict], build: Callable[[Path], None],
                verb: str = "built") -> Path:
        """RUNS_DIR/<name>-<key>: from the cache when it is there, else made by `build(out)`, whose failure
        is remembered for the rest of the run. Appends the record {step, config, config_hash, dir, cached,
        build_s} to `records`."""
        from lean.steps import config_dict

        out = self.runs_dir / f"{name}-{key}"
        record = {"step": name, "config": config_dict(config), "config_hash": key, "dir": str(out),
                  "cached": True, "build_s": 0.0}
        records.append(record)
        known = self.done.get(key)
        if isinstance(known, BuildError):
            raise BuildError(known.status, f"{name} ({verb} for an earlier variant) failed: {known.error}")
        if (out / "lean.json").is_file():
            return out
        record["cached"] = False
        started = time.perf_counter()
        try:
            build(out)
        except BuildError as e:
            self.done[key] = e
            raise
        finally:
            record["build_s"] = round(time.perf_counter() - started, 2)
        self.builds += 1
        self.done[key] = out
        return out

    def _build_one(self, step, config, source: str, out: Path, variant: str, position: str) -> None:
        from lean.steps import STEPS

        options = step_options(self.suite, step)  # the dict the parent built `config` from
        self._run_build(step.name, {"entry": list(STEPS[step.name]), "options": options, "source": source}, out,
                        variant, f"build {step.name} ({position})")

    def _run_build(self, name: str, spec: dict[str, Any], out: Path, variant: str, label: str) -> None:
        """Build `out` in a subprocess (build_main) from `spec`; a failure, a crash or the build timeout
        raises BuildError."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        safe = _safe(variant)
        spec_file = self.logs / f"{safe}.{name}.build.json"
        result_file = self.logs / f"{safe}.{name}.build-result.json"
        result_file.unlink(missing_ok=True)
        spec_file.write_text(json.dumps({"step": name, **spec, "out": str(out), "result": str(result_file)},
                                        default=str))
        self.status(label)
        first: list[tuple[int, float]] = []  # (step, time) of the first progress line

        def on_line(line: str) -> None:
            parts = line.split()
            if parts[0] == "@progress" and len(parts) == 3 and parts[2] != "0":
                done, total, now = int(parts[1]), int(parts[2]), time.monotonic()
                first[:] = first or [(done, now)]
                self.status(training_progress(label, done, total, first[0], now))

        code, timed_out = run_child(["-m", "lean.bench.runner", "build", str(spec_file)],
                                    self.logs / f"{safe}.{name}.build.log", self.build_timeout_s, on_line,
                                    child_env(None))
        if timed_out:
            raise BuildError("timeout", f"building {name} exceeded the {self.build_timeout_s:g} s build timeout")
        if result_file.is_file():
            result = json.loads(result_file.read_text())
            if result["status"] != "ok":
                raise BuildError(result["status"], f"{name} failed: {result['error']}")
        elif code != 0:
            status = "oom" if code == -signal.SIGKILL else "failed"
            raise BuildError(status, f"{name}: {crash_text(code, self.logs / f'{safe}.{name}.build.log')}")
        if not (out / "lean.json").is_file():
            raise BuildError("failed", f"{name} finished but wrote no {out}/lean.json")


def training_progress(label: str, done: int, total: int, first: tuple[int, float], now: float) -> str:
    """'label: done/total training steps, eta m:ss', the rate taken from the first reported step on: the
    setup before it (loading, caching a teacher's logits) is no training step. No eta until a step passed."""
    steps, elapsed = done - first[0], now - first[1]
    eta = f", eta {_clock(elapsed / steps * (total - done))}" if steps > 0 else ""
    return f"{label}: {done}/{total} training steps{eta}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


# ---- the run ---------------------------------------------------------------------------------------------

def missing_requirement(variant: Variant, device: str) -> str | None:
    """Why this machine cannot run the variant, or None."""
    for need in variant.requires:
        if need == "cuda":
            if not device.startswith("cuda"):
                return "needs CUDA: this machine has no CUDA GPU" if not _has_cuda() else "needs CUDA: measuring on --device cpu"
        elif importlib.util.find_spec(need.replace("-", "_")) is None:
            return f"needs the package {need} (not installed)"
    return None


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def default_output(suite: Suite) -> Path:
    return Path("runs/bench") / f"{_safe(suite.name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def select_variants(suite: Suite, names: list[str] | None) -> list[str]:
    """The variants to run, baseline first (ratios need it), in suite order."""
    if names:
        unknown = [n for n in names if n not in suite.variants]
        if unknown:
            raise LeanError(f"unknown variant '{unknown[0]}' in --variants; this suite has: {', '.join(suite.variants)}")
        chosen = set(names)
    else:
        chosen = set(suite.variants)
    chosen.add(suite.baseline)
    return [suite.baseline] + [n for n in suite.variants if n in chosen and n != suite.baseline]


def preload_kind(variant: Variant) -> str:
    """Which backend's libraries a variant's measuring subprocess can import before its model exists
    (lean.bench.measure.PRELOAD): an export last in its chain makes it an ONNX row."""
    if variant.kind != "model":
        return variant.kind
    if variant.steps:
        return "onnx" if variant.steps[-1].name == "export" else "torch"
    if variant.start not in STARTS and (Path(variant.start) / "model.onnx").is_file():
        return "onnx"
    return "torch"


def measure_files(logs: Path, variant: Variant) -> tuple[Path, Path, Path]:
    """A variant's measuring spec, result and log files."""
    safe = _safe(variant.name)
    return logs / f"{safe}.measure.json", logs / f"{safe}.result.json", logs / f"{safe}.measure.log"


def task_spec(suite: Suite) -> dict[str, Any]:
    """The task as a measuring subprocess loads it (its spec's "task", and TASK.json of start_early)."""
    return {"spec": suite.task, "text_column": suite.text_column, "label_column": suite.label_column,
            "split_seed": suite.split_seed}


def start_early(variant: Variant, threads: int, logs: Path) -> Child:
    """The variant's measuring subprocess, started before its turn (`--wait`): it imports its libraries
    and loads the task (logs/task.json, written by run_bench) while the previous variant is scored,
    then waits for "go" (see measure_variant)."""
    spec_file, result_file, log = measure_files(logs, variant)
    args = ["-m", "lean.bench.measure", str(spec_file), str(result_file), "--wait", preload_kind(variant),
            str(logs / "task.json")]
    return Child(args, log, child_env(threads, variant.measure.reuse_memory), lambda line: None)


def run_bench(suite: Suite, options: BenchOptions | None = None, console=None) -> dict[str, Any]:
    """Build and measure every selected variant; returns the results dict (also written to the output dir)."""
    from lean.bench.history import note_machine_state
    from lean.bench.report import finalize, print_row, write_reports
    from lean.data import load_task
    from lean.models import environment, resolve_device
    from lean.runtime import physical_cores
    from lean.steps import check_output_dir

    options = options or BenchOptions()
    output = check_output_dir(options.output or default_output(suite), options.overwrite)
    if options.rigorous:
        suite = suite.longer(RIGOROUS_FACTOR)
    names = select_variants(suite, options.variants)
    device = resolve_device(options.device)
    threads = options.threads or suite.measure.threads or physical_cores()
    task = load_task(suite.task, suite.text_column, suite.label_column, suite.split_seed)  # bad task: error before any work
    runs_dir = Path(options.runs_dir).expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    logs = output / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "task.json").write_text(json.dumps(task_spec(suite)))  # for subprocesses started early

    started = time.time()
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite.to_dict(),
        "run": {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished": None, "wall_s": None,
                "output": str(output.resolve()), "runs_dir": str(runs_dir), "device": device, "threads": threads,
                "selected": names, "interrupted": False, "steps_built": 0, "rigorous": options.rigorous,
                "quiet_tolerance": QUIET_TOLERANCE},
        "environment": environment(device) | {"threads": threads},
        "task": task.describe(),
        "baseline": suite.baseline,
        "variants": [],
    }
    progress = _Progress(console, len(names), enabled=not options.quiet)
    chains = Chains(suite, runs_dir, logs, progress.phase, suite.measure.build_timeout_s)
    teacher: dict[str, Any] = {}

    def teacher_dir(records: list[dict]) -> tuple[Path, str]:
        if isinstance(suite.teacher, str):
            from lean.models import resolve_model

            return Path(resolve_model(suite.teacher)), source_key(suite.teacher)
        if "error" in teacher:
            raise BuildError(teacher["error"].status, f"the teacher failed to build: {teacher['error'].error}")
        try:
            path, key = chains.build(suite.base, source_key(suite.base), suite.teacher, "teacher", "teacher", records)
        except BuildError as e:
            teacher["error"] = e
            raise BuildError(e.status, f"the teacher failed to build: {e.error}") from None
        return path, key

    pending: list[Pending] = []  # loaded variants whose latency is timed in turn once all are loaded
    early: dict[str, Child] = {}  # measuring subprocesses started before their variant's turn

    def start_next(index: int) -> None:  # the next measured variant's subprocess, importing meanwhile
        for name in names[index + 1:]:
            variant = suite.variants[name]
            if missing_requirement(variant, device):
                continue
            if variant.measure.interleave and variant.measure.latency and name not in early:
                early[name] = start_early(variant, threads, logs)
            return

    progress.start()
    previous_term = _terminate_as_interrupt()
    try:
        for index, name in enumerate(names):
            variant = suite.variants[name]
            progress.variant(name, index)
            row = measure_variant(suite, variant, device, threads, options, chains, teacher_dir, logs, progress, pending,
                                  early, lambda index=index: start_next(index))
            if name in early:  # started early, but the variant failed before its measurement: "end", not "go"
                early.pop(name).finish(timeout_s=10)
            results["variants"].append(row)
            results["run"]["steps_built"] = chains.builds
            finalize(results)
            write_reports(results, output)
            progress.done(index + 1)
            print_row(progress.console, row, results)
        if pending:
            progress.section(f"latency of {len(pending)} variants, timed in turn")
            interleaved_latency(pending, progress)
            finalize(results)
            write_reports(results, output)
            for p in pending:
                print_row(progress.console, p.row, results)
        note_machine_state(results, runs_dir)  # against earlier runs on this machine (lean.bench.history)
    except KeyboardInterrupt:
        results["run"]["interrupted"] = True
        done = {r["name"] for r in results["variants"]}
        results["run"]["not_run"] = [n for n in names if n not in done]
        for p in pending:
            if p.row.pop("pending", None):  # stopped before (or while) its latency was timed
                p.process.stop()
                p.row.update(status="interrupted", phase="measure", error="stopped before its latency was timed")
        raise
    finally:
        for child in early.values():
            child.stop()
            child.close()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        progress.stop()
        results["run"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results["run"]["wall_s"] = round(time.time() - started, 1)
        results["run"]["steps_built"] = chains.builds
        finalize(results)
        write_reports(results, output)
    return results


def _terminate_as_interrupt():
    """SIGTERM (kill, a CI timeout) stops the run like Ctrl-C: the child is stopped, finished rows stay."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def restore_interrupts() -> None:
    """In a child: let SIGINT raise KeyboardInterrupt even when the harness was started with SIGINT ignored
    (a background job), so a stopped step still removes its temp directory."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def measure_variant(suite: Suite, variant: Variant, device: str, threads: int, options: BenchOptions, chains: Chains,
                    teacher_dir, logs: Path, progress, pending: list["Pending"] | None = None,
                    early: dict[str, "Child"] | None = None, start_next: Callable[[], None] | None = None
                    ) -> dict[str, Any]:
    """One row: requirements, chain build, then the measuring subprocess. With `pending` (interleaved
    latency), a subprocess that loaded and scored its variant stays alive and joins `pending`; its row
    is completed by `interleaved_latency`. A subprocess in `early` (started by a previous variant's
    `start_next`, see start_early) is told to go instead of starting a new one; `start_next` is called
    once this variant's subprocess runs, so the next one imports while this one is scored."""
    from lean.models import resolve_model

    measure = variant.measure
    timeout_s = options.timeout_s or measure.timeout_s
    row: dict[str, Any] = {"name": variant.name, "status": "ok", "error": None, "phase": None,
                           "config": variant.config(), "measure": dataclasses.asdict(measure) | {"timeout_s": timeout_s},
                           "chain": [], "model_dir": None, "timing": {}}
    started = time.perf_counter()
    reason = missing_requirement(variant, device)
    if reason:
        row.update(status="skipped", error=reason, phase="requirements")
        return row

    # build
    progress.phase("build")
    build_started = time.perf_counter()
    model_dir: Path | None = None
    try:
        if variant.kind == "model":
            if variant.start == "teacher":
                source, key = teacher_dir(row["chain"])
            elif variant.start == "base":
                source, key = Path(resolve_model(suite.base)), source_key(suite.base)
            else:
                source, key = Path(resolve_model(variant.start)), source_key(variant.start)
            model_dir, _ = chains.build(str(source), key, variant.steps, f"variant '{variant.name}'", variant.name, row["chain"])
        elif variant.kind == CLASSICAL_STEP:
            model_dir = chains.classical(task_spec(suite), variant.name, row["chain"])
    except BuildError as e:
        row.update(status=e.status, error=e.error, phase="build")
    except LeanError as e:
        row.update(status="failed", error=str(e), phase="build")
    row["timing"]["build_s"] = round(time.perf_counter() - build_started, 2)
    if row["status"] != "ok":
        row["timing"]["wall_s"] = round(time.perf_counter() - started, 2)
        return row
    row["model_dir"] = str(model_dir) if model_dir else None

    # measure
    # tfidf-logreg cuts its latency texts with the base model's tokenizer, at the token counts the transformers see
    tokenizer_dir = str(model_dir) if model_dir and variant.kind == "model" else _base_tokenizer_dir(suite)
    spec = {
        "kind": variant.kind, "model_dir": row["model_dir"], "tokenizer_dir": tokenizer_dir,
        "load": dataclasses.asdict(variant.load), "device": device, "threads": threads,
        "task": task_spec(suite),
        "max_length": measure.max_length or (trained_max_length(model_dir) if model_dir else 128),
        "eval_batch_size": measure.eval_batch_size, "max_eval_samples": measure.max_eval_samples,
        "batch_sizes": measure.batch_sizes, "seq_lengths": measure.seq_lengths, "warmup": measure.warmup,
        "repeats": measure.repeats, "min_repeats": measure.min_repeats, "max_cell_s": measure.max_cell_s,
        "quality": measure.quality, "latency": measure.latency,
        "perplexity": measure.perplexity, "generation": measure.generation,
        "interleave": pending is not None and measure.interleave and measure.latency,
        "reuse_memory": measure.reuse_memory,  # applied through the subprocess's environment (child_env)
    }
    spec_file, result_file, log = measure_files(logs, variant)
    spec_file.write_text(json.dumps(spec, indent=1, default=str))
    result_file.unlink(missing_ok=True)
    current = {"phase": "starting"}

    def on_line(line: str) -> None:
        if line.startswith("@phase "):
            current["phase"] = line[len("@phase "):]
            progress.phase(f"measure: {current['phase']}")

    progress.phase("measure: starting")
    args = ["-m", "lean.bench.measure", str(spec_file), str(result_file)]
    env = child_env(threads, measure.reuse_memory)
    if not spec["interleave"]:
        code, timed_out = run_child(args, log, timeout_s, on_line, env)
        return collect_row(row, result_file, log, code, timed_out, current["phase"], timeout_s, time.perf_counter() - started)
    process = (early or {}).pop(variant.name, None)
    if process is not None:
        process.on_line = on_line
        try:
            process.proc.stdin.write("go\n")
            process.proc.stdin.flush()
        except (BrokenPipeError, OSError):  # it ended while it waited: start a fresh one
            process.close()
            process = None
    if process is None:
        process = Child(args, log, env, on_line)
    if start_next is not None:
        start_next()
    reply = process.reply(timeout_s)
    if reply == "@ready":  # loaded and scored: its latency is timed in turn with the other variants
        row["pending"] = "latency"
        pending.append(Pending(row, process, variant.measure, result_file, timeout_s, time.perf_counter() - started))
        collect_row(row, result_file, log, 0, False, current["phase"], timeout_s, time.perf_counter() - started, final=False)
        return row
    if reply == Child.TIMEOUT:
        process.close()
        return collect_row(row, result_file, log, process.proc.returncode, True, current["phase"], timeout_s, time.perf_counter() - started)
    code = process.proc.wait()
    process.close()
    return collect_row(row, result_file, log, code, False, current["phase"], timeout_s, time.perf_counter() - started)


def collect_row(row: dict[str, Any], result_file: Path, log: Path, code: int, timed_out: bool, phase: str,
                timeout_s: float, wall_s: float, final: bool = True) -> dict[str, Any]:
    """Fill `row` from the measuring subprocess's result file and how it ended."""
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    for key in ("quality", "generation", "latency", "memory", "size", "threads", "note"):
        if key in result:
            row[key] = result[key]
    row["timing"].update(result.get("timing", {}))
    row["timing"]["wall_s"] = round(wall_s, 2)
    row["log"] = str(log)
    if not final:
        return row
    if timed_out:
        row.update(status="timeout", phase="measure",
                   error=f"exceeded the {timeout_s:g} s per-variant timeout during: {phase}")
    elif result.get("status") in STATUSES and result["status"] != "ok":
        row.update(status=result["status"], error=result.get("error"), phase="measure")
    elif result.get("status") != "ok":
        status = "oom" if code == -signal.SIGKILL else "failed"
        row.update(status=status, phase="measure", error=crash_text(code, log) + (
            " (SIGKILL without a timeout: most likely the out-of-memory killer)" if status == "oom" else ""))
    return row


ROUNDS = 12  # the interleaved latency spreads each cell's timed calls over this many rounds (after the first)
EXTRA_SHARE = 0.1  # rounds past the planned ones (for cells with under half their calls in quiet rounds) may add
                   # at most this share of the planned rounds' time
REWARM_BELOW_S = 0.1  # a visit to a cell faster than this starts with untimed calls (see interleaved_latency)...
REWARM_S = 0.03  # ...for about this long (one call at least)


@dataclass
class Pending:
    """A variant loaded in its measuring subprocess, waiting for its interleaved latency."""

    row: dict[str, Any]
    process: Child
    measure: Any  # the variant's MeasureConfig
    result_file: Path
    timeout_s: float
    load_wall_s: float  # from the variant's start to @ready
    ended: str | None = None  # None while it answers; else why it stopped ("timeout" or "exited")

    def grid(self) -> set[tuple[int, int]]:
        return {(b, s) for b in self.measure.batch_sizes for s in self.measure.seq_lengths}

    def target(self, times: list[float]) -> int:
        """Timed calls this cell gets: `repeats`, fewer when they would take more than `max_cell_s` at
        the median so far, never fewer than `min_repeats`."""
        m = self.measure
        if m.max_cell_s is None or not times:
            return m.repeats
        return min(m.repeats, max(m.min_repeats, math.ceil(m.max_cell_s / statistics.median(times))))

    def wanted(self, times: list[float], counted: int | None = None, extra: bool = False) -> int:
        """Timed calls this cell still wants: its target less `counted` (the calls made in quiet rounds;
        default: all of them); in the `extra` rounds past the planned ones, half its target less them."""
        target = self.target(times)
        counted = len(times) if counted is None else counted
        return max(0, (math.ceil(target / 2) if extra else target) - counted)

    def calls_now(self, times: list[float], counted: int | None = None, extra: bool = False) -> int:
        """Calls to ask for in this round: one in the first (after the warm-up), then a ROUNDS-th share
        of the cell's target while it wants more (see `wanted`), so its calls spread over the whole
        interleaved phase."""
        if not times:
            return 1
        return min(self.wanted(times, counted, extra), math.ceil((self.target(times) - 1) / ROUNDS))


def rewarm_calls(times: list[float]) -> int:
    """Untimed calls to start a visit with: after the other variants ran, the first calls find cold
    caches and sleeping threads (after 0.6 s of a two-thread PyTorch workload, a TF-IDF batch-32 call
    took 1.5 times its steady 3.9 ms, and about 8 calls to get there), which
    costs little beside 0.1 s but a lot beside 1 ms; so a fast cell gets REWARM_S of untimed calls."""
    if not times:
        return 0
    median = statistics.median(times)
    return 0 if median >= REWARM_BELOW_S else max(1, min(100, math.ceil(REWARM_S / median)))


def process_cpu_ns(pid: int) -> int | None:
    """CPU time used so far by every thread of a process (Linux /proc schedstat, ns); None elsewhere."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        return sum(int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0]) for t in tasks)
    except (OSError, ValueError, IndexError):
        return None


def wait_until_idle(pid: int, window_s: float = 0.005, busy_share: float = 0.05, max_s: float = 1.0) -> float:
    """Wait until a process uses under `busy_share` of one core over `window_s` (its worker threads stopped
    spinning), at most `max_s`; -> seconds waited. Without /proc, waits one window."""
    start = time.perf_counter()
    before = process_cpu_ns(pid)
    while True:
        time.sleep(window_s)
        now = process_cpu_ns(pid)
        if before is None or now is None or now - before < busy_share * window_s * 1e9 \
                or time.perf_counter() - start >= max_s:
            return time.perf_counter() - start
        before = now


def interleaved_latency(pending: list[Pending], progress) -> None:
    """Time every pending variant's latency cells in rounds, then let each subprocess write its result
    and complete its row.

    A round visits every cell and, within a cell, every variant (the order rotating each round); each
    visit is a few back-to-back calls (one in the first round, after the warm-up; then a ROUNDS-th of
    the cell's calls). So each cell's calls spread over the whole phase. A slow spell of a shared
    machine (seconds to minutes) shows as rounds in which a cell's variants are slower together
    (lean.bench.rounds): those rounds are set aside for every variant of the cell, and a cell short of
    calls in quiet rounds gets more rounds, for at most EXTRA_SHARE more time than the planned ones.
    A visit to a cell whose calls take under REWARM_BELOW_S starts with REWARM_S of untimed calls, so
    every timed call is one of a steady stream. After each visit the harness waits until that
    variant's process is idle (OpenMP and onnxruntime worker threads spin for a while after a call,
    and would otherwise run beside the next variant's timed call).
    """
    from lean.bench.rounds import quiet_calls, quiet_rounds, settle_cell

    keys: list[tuple[int, int]] = []  # every variant's cells, in suite order
    for p in pending:
        keys += [(b, s) for b in p.measure.batch_sizes for s in p.measure.seq_lengths if (b, s) not in keys]
    times: dict[tuple[int, tuple[int, int]], list[float]] = {(id(p), k): [] for p in pending for k in p.grid()}
    visits: dict[tuple[int, tuple[int, int]], list[dict[str, Any]]] = {key: [] for key in times}  # per round
    counted: dict[tuple[int, tuple[int, int]], int] = {key: 0 for key in times}  # calls in quiet rounds
    quiet: dict[tuple[int, int], set[int]] = {}
    skipped: set[tuple[int, tuple[int, int]]] = set()  # cells a variant answered '-' (longer than it takes)
    by_id = {id(p): p for p in pending}

    def settle(key: tuple[int, int]) -> None:  # which rounds of this cell were quiet, and the calls they hold
        cell_visits = {pid: visits[pid, key] for pid in by_id if visits.get((pid, key))}
        quiet[key] = quiet_rounds(cell_visits)
        for pid, vs in cell_visits.items():
            counted[pid, key] = len(quiet_calls(vs, quiet[key]))

    started, planned_s = time.perf_counter(), None
    try:
        for round_ in range(10**9):
            extra = round_ > ROUNDS  # past the planned rounds: making up the calls of rounds set aside
            if round_ == ROUNDS + 1:
                planned_s = time.perf_counter() - started
            left = sum(by_id[pid].wanted(cell, counted[pid, key], extra) for (pid, key), cell in times.items()
                       if by_id[pid].ended is None and (pid, key) not in skipped)
            if left <= 0 or (extra and time.perf_counter() - started > planned_s * (1 + EXTRA_SHARE)):
                break
            progress.phase(f"latency round {round_ + 1}: every cell, {len(pending)} variants in turn, about {left} "
                           "timed calls to go" + (" (more rounds: the machine ran slower in some)" if extra else ""))
            for batch, length in keys:
                taking = [p for p in pending if p.ended is None and (batch, length) in p.grid()
                          and (id(p), (batch, length)) not in skipped]
                if not taking:
                    continue
                k = round_ % len(taking)
                for p in taking[k:] + taking[:k]:
                    cell = times[id(p), (batch, length)]
                    calls = p.calls_now(cell, counted[id(p), (batch, length)], extra)
                    if not calls:
                        continue
                    reply = p.process.ask(f"time {batch} {length} {calls} {rewarm_calls(cell)}", p.timeout_s)
                    wait_until_idle(p.process.proc.pid)
                    if reply is None or reply == Child.TIMEOUT:
                        p.ended = "timeout" if reply == Child.TIMEOUT else "exited"
                        continue
                    values = reply.split()[3]
                    if values == "-":  # a cell this variant skips (longer than the model takes)
                        skipped.add((id(p), (batch, length)))
                        continue
                    new = [float(t) for t in values.split(",")]
                    cell += new
                    visits[id(p), (batch, length)].append({"round": round_, "ms": [round(t * 1000, 4) for t in new]})
                settle((batch, length))
    finally:
        for key in keys:  # the last round included (or the one Ctrl-C cut short)
            settle(key)
        for p in pending:  # every process writes its result and exits at once (about a second each)
            if p.ended is None:
                p.process.end()
        for p in pending:
            if p.ended is None:
                code, timed_out = p.process.finish(p.timeout_s)
            else:
                code, timed_out = p.process.proc.wait(), p.ended == "timeout"
                p.process.close()
            p.row.pop("pending", None)
            collect_row(p.row, p.result_file, p.process.log, code, timed_out, "latency (interleaved)", p.timeout_s,
                        p.load_wall_s)
            timing = p.row["timing"]
            timing["wall_s"] = round(timing["wall_s"] + (timing.get("latency_s") or 0), 2)  # the interleaved phase, whole
            for cell in p.row.get("latency") or []:  # every timed call by round; figures from the quiet rounds
                key = (cell["batch_size"], cell["seq_length"])
                mine = visits.get((id(p), key))
                if mine and "median_ms" in cell:
                    settle_cell(cell, mine, quiet[key])


def _base_tokenizer_dir(suite: Suite) -> str | None:
    from lean.models import resolve_model

    try:
        path = resolve_model(suite.base)
    except LeanError:
        return None
    return path if Path(path).is_dir() else None


class _Progress:
    """A rich progress line: variant i/N, its phase (with a step's own eta while building), elapsed, eta."""

    def __init__(self, console, total: int, enabled: bool = True):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.bar = None
        self.total = total
        self._last_kind, self._last_print = None, 0.0
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
                                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                TextColumn("{task.fields[phase]}"), console=self.console)
            self.task = self.bar.add_task("bench", total=total, phase="")

    def start(self):
        if self.bar:
            self.bar.start()

    def stop(self):
        if self.bar:
            self.bar.stop()

    def variant(self, name: str, index: int):
        if self.bar:
            self.bar.update(self.task, description=f"{name}", phase="")
        else:
            self.console.print(f"[{index + 1}/{self.total}] {name}", highlight=False)

    def section(self, text: str):
        """A stage of the run that is no single variant (the interleaved latency)."""
        if self.bar:
            self.bar.update(self.task, description=text, phase="")
        else:
            self.console.print(text, highlight=False)

    def phase(self, text: str):
        if self.bar:
            self.bar.update(self.task, phase=text)
            return
        # without a terminal: a line when the phase changes, and a progress line at most every 30 s
        kind = text.split(":")[0] if text.startswith("build") else text  # a build's step counter is not a new phase
        now = time.monotonic()
        if kind != self._last_kind or now - self._last_print >= 30:
            self.console.print(f"    {text}", highlight=False)
            self._last_kind, self._last_print = kind, now

    def done(self, completed: int):
        if self.bar:
            self.bar.update(self.task, completed=completed)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "build":
        sys.exit(build_main(sys.argv[2]))
    print("usage: python -m lean.bench.runner build SPEC.json", file=sys.stderr)
    sys.exit(2)
