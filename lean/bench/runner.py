"""The harness: build each variant's chain (cached by config hash), measure it in a fresh subprocess,
write the results after every variant.

    from lean.bench import run_bench, load_suite, BenchOptions
    results = run_bench(load_suite(), BenchOptions(output="runs/bench/default"))

Parent side of lean.bench, at the top of its layers: chains (lean.bench.chains) build each variant's
directory; `python -m lean.bench.worker` measures it (lean.bench.launcher starts it); loaded variants
are timed in turn (lean.bench.scheduler); the reports are rewritten after every row
(lean.bench.report). A failure, a timeout or an out-of-memory is that variant's row; Ctrl-C stops
the running subprocess and leaves every finished row written. The run holds a lock on its output
directory, so a second run on it fails at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lean.bench.chains import BuildError, Chains, source_key
from lean.bench.history import note_machine_state
from lean.bench.launcher import Child, terminate_as_interrupt
from lean.bench.machine import MachineLog
from lean.bench.plan import (  # noqa: F401
    default_output,
    list_lines,
    measure_files,
    missing_requirement,
    preload_kind,
    select_variants,
    start_early,
    task_spec,
)
from lean.bench.progress import Progress
from lean.bench.reliability import MIN_QUIET_ROUNDS
from lean.bench.report import finalize, write_reports
from lean.bench.results import SCHEMA_VERSION
from lean.bench.scheduler import interleaved_latency
from lean.bench.stats import QUIET_TOLERANCE
from lean.bench.suite import Suite
from lean.bench.terminal import print_row
from lean.bench.variant import VariantRun
from lean.errors import LeanError

# `lean bench --rigorous`: each cell's calls (repeats, min_repeats, max_cell_s) times this, over as many
# rounds, so they spread over three times as long: steadier speedups on a noisy machine (the runs that
# show it are cited in docs/bench.md).
RIGOROUS_FACTOR = 3
# What a run writes into its output directory (its marker lists them: --overwrite may replace only these).
RUN_ENTRIES = ("results.json", "results.csv", "report.md", "pareto.png", "logs/")


def suite_inputs(suite: Suite) -> list[str]:
    """The local paths a run reads (the suite file, a task file, the base, the teacher, measured directories):
    its output may be none of them and no folder holding one."""
    paths = [suite.file, suite.task, suite.base, suite.teacher if isinstance(suite.teacher, str) else None]
    paths += [v.start for v in suite.variants.values() if v.start not in ("teacher", "base")]
    return [str(p) for p in paths if p]


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
    trust_remote_code: bool = False  # run Python shipped in model directories (`--trust-remote-code`)
    # a latency cell left with fewer quiet rounds than this is reported unreliable (lean.bench.reliability)
    min_quiet_rounds: int = MIN_QUIET_ROUNDS

    def __post_init__(self):
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= 4096):
            raise LeanError(f"--threads must be a whole number from 1 to 4096, got {self.threads!r}")
        timeout = self.timeout_s
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not math.isfinite(timeout) or timeout <= 0):
            raise LeanError(f"--timeout must be a positive number of seconds, got {self.timeout_s!r}")
        if isinstance(self.min_quiet_rounds, bool) or not isinstance(self.min_quiet_rounds, int) \
                or not 1 <= self.min_quiet_rounds <= 1000:
            raise LeanError(f"--min-quiet-rounds must be a whole number from 1 to 1000, got {self.min_quiet_rounds!r}")
        runs_dir = Path(self.runs_dir).expanduser()
        if runs_dir.exists() and not runs_dir.is_dir():
            raise LeanError(f"--runs-dir '{runs_dir}' is a file: pass a directory for the cache of built steps")
        if self.output is not None and Path(self.output).expanduser().resolve() == runs_dir.resolve():
            raise LeanError("-o and --runs-dir name the same directory: give the run its own output directory")


class BenchRun:
    """One run of a suite: its options checked, its output locked, then every row, then the latency."""

    def __init__(self, suite: Suite, options: BenchOptions, console=None):
        from lean.data import load_task
        from lean.models import environment, resolve_device
        from lean.runtime import physical_cores
        from lean.steps import check_output_dir

        self.options = options
        self.output = check_output_dir(options.output or default_output(suite), options.overwrite,
                                       inputs=suite_inputs(suite))
        if options.rigorous:
            suite = suite.longer(RIGOROUS_FACTOR)
        if options.trust_remote_code:
            suite = dataclasses.replace(suite, trust_remote_code=True)
        self.suite = suite
        self.names = select_variants(suite, options.variants)
        self.device = resolve_device(options.device)
        self.threads = options.threads or suite.measure.threads or physical_cores()
        # a bad task is an error before any work
        task = load_task(suite.task, suite.text_column, suite.label_column, suite.split_seed)
        self.runs_dir = Path(options.runs_dir).expanduser().resolve()
        self.logs = self.output / "logs"
        self.results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "suite": suite.to_dict(),
            "run": {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished": None,
                    "wall_s": None, "output": str(self.output.resolve()), "runs_dir": str(self.runs_dir),
                    "device": self.device, "threads": self.threads, "selected": self.names, "interrupted": False,
                    "steps_built": 0, "rigorous": options.rigorous, "quiet_tolerance": QUIET_TOLERANCE,
                    "min_quiet_rounds": options.min_quiet_rounds},
            "environment": environment(self.device) | {"threads": self.threads},
            "task": task.describe(),
            "baseline": suite.baseline,
            "variants": [],
        }
        self.progress = Progress(console, len(self.names), enabled=not options.quiet)
        self.chains = Chains(suite, self.runs_dir, self.logs, self.progress.phase, suite.measure.build_timeout_s)
        self.teacher_error: BuildError | None = None
        self.pending: list = []  # loaded variants whose latency is timed in turn once all are loaded
        self.early: dict[str, Child] = {}  # measuring subprocesses started before their variant's turn
        self.machine = MachineLog()  # load and CPU frequency before, during and after the timing

    def teacher_dir(self, records: list[dict]) -> tuple[Path, str]:
        """The teacher's directory and chain key, built once per run (a failure is remembered)."""
        suite = self.suite
        if isinstance(suite.teacher, str):
            from lean.models import resolve_model

            return Path(resolve_model(suite.teacher)), source_key(suite.teacher)
        if self.teacher_error is not None:
            raise BuildError(self.teacher_error.status, f"the teacher failed to build: {self.teacher_error.error}")
        try:
            return self.chains.build(suite.base, source_key(suite.base), suite.teacher, "teacher", "teacher", records)
        except BuildError as e:
            self.teacher_error = e
            raise BuildError(e.status, f"the teacher failed to build: {e.error}") from None

    def start_next(self, index: int) -> None:
        """The next measured variant's subprocess, importing while this one is scored."""
        for name in self.names[index + 1:]:
            variant = self.suite.variants[name]
            if missing_requirement(variant, self.device):
                continue
            if variant.measure.interleave and variant.measure.latency and name not in self.early:
                self.early[name] = start_early(variant, self.threads, self.logs)
            return

    def run(self) -> dict[str, Any]:
        from lean.locks import output_lock

        with output_lock(self.output, "bench run"):
            self._claim_output()
            self.logs.mkdir(exist_ok=True)
            (self.logs / "task.json").write_text(json.dumps(task_spec(self.suite)))  # for subprocesses started early
            started = time.time()
            self.machine.sample("before")
            self.progress.start()
            previous_term = terminate_as_interrupt()
            try:
                self._rows()
            except BaseException as e:
                self._stopped(e)
                raise
            finally:
                self._close(previous_term, started)
        return self.results

    def _claim_output(self) -> None:
        """Under the run's lock: the output checked again, an earlier run there removed (--overwrite, only
        what lean can prove it wrote), then the directory marked as this run's (lean.outputs)."""
        from lean.outputs import mark, remove_output
        from lean.steps import check_output_dir

        check_output_dir(self.output, self.options.overwrite, inputs=suite_inputs(self.suite))
        if self.output.is_dir() and any(self.output.iterdir()):
            remove_output(self.output)
        self.output.mkdir(parents=True, exist_ok=True)
        self.results["output_id"] = mark(self.output, RUN_ENTRIES, record="results.json")

    def _rows(self) -> None:
        for index, name in enumerate(self.names):
            self.progress.variant(name, index)
            row = VariantRun(self, self.suite.variants[name], index).row()
            if name in self.early:  # started early, but the variant failed before its measurement: END, not GO
                self.early.pop(name).finish(timeout_s=10)
            self.results["variants"].append(row)
            self.results["run"]["steps_built"] = self.chains.builds
            if not row.get("pending"):  # timed in its own turn (an interleaved row is timed below)
                self.machine.sample("during")
            finalize(self.results)
            write_reports(self.results, self.output)
            self.progress.done(index + 1)
            print_row(self.progress.console, row, self.results)
        if self.pending:
            self.progress.section(f"latency of {len(self.pending)} variants, timed in turn")
            interleaved_latency(self.pending, self.progress, lambda: self.machine.sample("during"))
            finalize(self.results)
            write_reports(self.results, self.output)
            for p in self.pending:
                print_row(self.progress.console, p.row, self.results)
        note_machine_state(self.results, self.runs_dir)  # against earlier runs on this machine (lean.bench.history)

    def _stopped(self, e: BaseException) -> None:
        """The run stopped early (Ctrl-C, SIGTERM, an error): say so, and which variants did not run."""
        run = self.results["run"]
        run["interrupted"] = True
        if not isinstance(e, KeyboardInterrupt):
            run["error"] = f"{type(e).__name__}: {e}"
        done = {r["name"] for r in self.results["variants"]}
        run["not_run"] = [n for n in self.names if n not in done]
        for p in self.pending:
            if p.row.pop("pending", None):  # stopped before (or while) its latency was timed
                p.process.stop()
                p.row.update(status="interrupted", phase="measure", error="stopped before its latency was timed")

    def _close(self, previous_term, started: float) -> None:
        for child in self.early.values():
            child.stop()
            child.close()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        self.progress.stop()
        run = self.results["run"]
        run["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        run["wall_s"] = round(time.time() - started, 1)
        run["steps_built"] = self.chains.builds
        self.machine.sample("after")
        run["machine"] = self.machine.record()
        finalize(self.results)
        write_reports(self.results, self.output)


def run_bench(suite: Suite, options: BenchOptions | None = None, console=None) -> dict[str, Any]:
    """Build and measure every selected variant; returns the results dict (also written to the output dir)."""
    return BenchRun(suite, options or BenchOptions(), console).run()
