"""One row of a run: a variant's requirements, its chain built, its measuring subprocess.

    row = VariantRun(bench_run, variant, index).row()

With interleaved latency, a subprocess that loaded and scored its variant stays alive and joins the
run's `pending`; lean.bench.scheduler completes its row. A subprocess started early (by the previous
variant, lean.bench.runner.start_early) is told GO instead of starting a new one, and the next
variant's subprocess is started once this one runs, so its imports overlap this one's scoring.
Parent side of lean.bench.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from lean.bench import protocol
from lean.bench.chains import BuildError, source_key, trained_max_length
from lean.bench.kinds import KINDS, backend_name
from lean.bench.launcher import Child, child_env, run_child
from lean.bench.outcome import collect_row
from lean.bench.plan import measure_files, missing_requirement, task_spec
from lean.bench.scheduler import Pending
from lean.errors import LeanError


def base_tokenizer_dir(suite) -> str | None:
    from lean.models import resolve_model

    try:
        path = resolve_model(suite.base)
    except LeanError:
        return None
    return path if Path(path).is_dir() else None


class VariantRun:
    """A variant measured within a BenchRun (`run`: its suite, options, chains, pending and early children)."""

    def __init__(self, run, variant, index: int):
        self.run, self.variant, self.index = run, variant, index
        self.measure = variant.measure
        self.timeout_s = run.options.timeout_s or self.measure.timeout_s
        self.started = time.perf_counter()
        self.phase = "starting"
        self.record: dict[str, Any] = {
            "name": variant.name, "status": "ok", "error": None, "phase": None, "config": variant.config(),
            "measure": dataclasses.asdict(self.measure) | {"timeout_s": self.timeout_s},
            "chain": [], "model_dir": None, "timing": {}}

    def row(self) -> dict[str, Any]:
        record = self.record
        reason = missing_requirement(self.variant, self.run.device)
        if reason:
            record.update(status="skipped", error=reason, phase="requirements")
            return record
        model_dir = self.build()
        if record["status"] != "ok":
            return record
        try:
            spec = self.spec(model_dir)
        except LeanError as e:  # an unreadable lean.json in the chain: this row's error, the run goes on
            record.update(status="failed", error=str(e), phase="measure")
            record["timing"]["wall_s"] = round(time.perf_counter() - self.started, 2)
            return record
        return self.measure_in_child(spec)

    def build(self) -> Path | None:
        """The variant's directory, built (or found in the cache); a failure is the row's."""
        from lean.models import resolve_model

        run, variant, record = self.run, self.variant, self.record
        run.progress.phase("build")
        build_started = time.perf_counter()
        model_dir: Path | None = None
        try:
            kind = KINDS[variant.kind]
            if kind.fit is not None:
                model_dir = run.chains.fitted(kind, task_spec(run.suite), variant.name, record["chain"])
            else:
                if variant.start == "teacher":
                    source, key = run.teacher_dir(record["chain"])
                elif variant.start == "base":
                    source, key = Path(resolve_model(run.suite.base)), source_key(run.suite.base)
                else:
                    source, key = Path(resolve_model(variant.start)), source_key(variant.start)
                model_dir, _ = run.chains.build(str(source), key, variant.steps, f"variant '{variant.name}'",
                                                variant.name, record["chain"])
        except BuildError as e:
            record.update(status=e.status, error=e.error, phase="build")
        except LeanError as e:
            record.update(status="failed", error=str(e), phase="build")
        record["timing"]["build_s"] = round(time.perf_counter() - build_started, 2)
        if record["status"] != "ok":
            record["timing"]["wall_s"] = round(time.perf_counter() - self.started, 2)
            return None
        record["model_dir"] = str(model_dir) if model_dir else None
        return model_dir

    def spec(self, model_dir: Path | None) -> dict[str, Any]:
        """What the measuring subprocess loads and how it measures (lean.bench.worker.measure)."""
        run, variant, measure = self.run, self.variant, self.measure
        fitted = KINDS[variant.kind].fit is not None
        # a fitted kind cuts its latency texts with the base model's tokenizer, at the token counts the transformers see
        tokenizer_dir = base_tokenizer_dir(run.suite) if fitted else (str(model_dir) if model_dir else None)
        return {
            "kind": variant.kind, "backend": backend_name(variant.kind, model_dir),
            "model_dir": self.record["model_dir"],
            "tokenizer_dir": tokenizer_dir, "load": dataclasses.asdict(variant.load), "device": run.device,
            "threads": run.threads, "task": task_spec(run.suite), "split": measure.split,
            "max_length": measure.max_length or (trained_max_length(model_dir) if model_dir else 128),
            "eval_batch_size": measure.eval_batch_size, "max_eval_samples": measure.max_eval_samples,
            "batch_sizes": measure.batch_sizes, "seq_lengths": measure.seq_lengths, "warmup": measure.warmup,
            "repeats": measure.repeats, "min_repeats": measure.min_repeats, "max_cell_s": measure.max_cell_s,
            "quality": measure.quality, "latency": measure.latency,
            "perplexity": measure.perplexity, "generation": measure.generation,
            "interleave": measure.interleave and measure.latency,
            "reuse_memory": measure.reuse_memory,  # applied through the subprocess's environment (child_env)
            "trust_remote_code": run.suite.trust_remote_code,  # the command line's flag only
        }

    def on_line(self, line: str) -> None:
        text = protocol.parse_phase(line)
        if text is not None:
            self.phase = text
            self.run.progress.phase(f"measure: {text}")

    def measure_in_child(self, spec: dict[str, Any]) -> dict[str, Any]:
        run, variant = self.run, self.variant
        spec_file, result_file, log = measure_files(run.logs, variant)
        spec_file.write_text(json.dumps(spec, indent=1, default=str))
        result_file.unlink(missing_ok=True)
        run.progress.phase("measure: starting")
        args = ["-m", "lean.bench.worker", str(spec_file), str(result_file)]
        env = child_env(run.threads, self.measure.reuse_memory)
        if not spec["interleave"]:
            code, timed_out = run_child(args, log, self.timeout_s, self.on_line, env)
            return self.collect(result_file, log, code, timed_out)
        process = run.early.pop(variant.name, None)
        if process is not None:
            process.on_line = self.on_line
            if not process.go():  # it ended while it waited: start a fresh one
                process.close()
                process = None
        if process is None:
            process = Child(args, log, env, self.on_line)
        run.start_next(self.index)
        reply = process.reply(self.timeout_s)
        if reply == protocol.READY:  # loaded and scored: its latency is timed in turn with the other variants
            self.record["pending"] = "latency"
            run.pending.append(Pending(self.record, process, self.measure, result_file, self.timeout_s,
                                       time.perf_counter() - self.started))
            return self.collect(result_file, log, 0, False, final=False)
        if reply == Child.TIMEOUT:
            process.close()
            return self.collect(result_file, log, process.proc.returncode, True)
        code = process.proc.wait()
        process.close()
        return self.collect(result_file, log, code, False)

    def collect(self, result_file: Path, log: Path, code: int, timed_out: bool, final: bool = True) -> dict[str, Any]:
        return collect_row(self.record, result_file, log, code, timed_out, self.phase, self.timeout_s,
                           time.perf_counter() - self.started, final=final)
