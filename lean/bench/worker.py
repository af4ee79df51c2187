"""The measuring subprocess: load one variant, score it, time it, note its memory.

    python -m lean.bench.worker SPEC.json RESULT.json [--wait BACKEND TASK.json]

The harness (lean.bench.runner) starts one fresh interpreter per variant, so peak memory belongs to
that variant alone and a crash marks one row. SPEC.json says what to load and how to measure (see
`measure`); RESULT.json is rewritten after every phase, so a variant killed by the timeout still
leaves the figures it finished. PHASE lines on stdout (lean.bench.protocol) tell the parent what is
happening. With --wait the process imports that backend's libraries, loads the task (TASK.json) and
waits for GO on stdin before it reads SPEC.json: the harness starts the next variant's subprocess
this way while the current one is scored, so the imports overlap.

Honest measuring (docs/bench.md): inputs are the task's real texts, tokenized once; latency is taken
after warm-up, synchronised on CUDA, with a fixed thread count; memory is the subprocess's peak RSS
(CPU) or max_memory_allocated (CUDA), beside the RSS of the same interpreter right after its
imports, before any model or data. Child side of lean.bench.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from lean.bench import protocol
from lean.bench.inputs import load_spec_task
from lean.bench.kinds import BACKENDS, backend_name
from lean.bench.latency import run_latency
from lean.bench.lm import generation
from lean.bench.memory import rss_now_mb, rss_peak_mb
from lean.bench.quality import QUALITY

USAGE = "usage: python -m lean.bench.worker SPEC.json RESULT.json [--wait BACKEND TASK.json]"


def phase(text: str) -> None:
    print(protocol.phase_line(text), flush=True)


def import_backend(name: str, threads: int, device: str) -> None:
    """Import what the backend runs on, before the bare RSS is taken; PyTorch gets its thread count."""
    for module in BACKENDS[name].preload:
        importlib.import_module(module)
    if name == "torch" or "torch" in BACKENDS[name].preload:
        import torch

        torch.set_num_threads(threads)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
    import lean.data  # noqa: F401  (part of the bare interpreter, here and in wait_for_turn)


def load(spec: dict[str, Any], result: dict[str, Any], loaded_task) -> tuple[Any, Any]:
    """Import, load the task and the model; fill memory, timing, size. -> (backend, task)."""
    import numpy as np  # noqa: F401  (part of the bare interpreter of every backend)

    threads, device = int(spec["threads"]), spec["device"]
    name = spec.get("backend") or backend_name(spec["kind"], spec["model_dir"])
    phase("importing")
    import_backend(name, threads, device)
    early = loaded_task is not None and loaded_task[0] == spec["task"]
    result["memory"] = {"device": device, "bare_rss_mb": loaded_task[2] if early else rss_now_mb(),
                        # the allocator settings this process started with (measure.reuse_memory sets them)
                        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}}
    result["threads"] = threads

    phase("loading task")
    task = loaded_task[1] if early else load_spec_task(spec["task"])
    spec["task_kind"] = task.kind  # a causal LM loads with its LM head

    phase("loading model")
    start = time.perf_counter()
    backend = BACKENDS[name](spec["model_dir"], spec, task)
    backend.sync()
    # started_early: imported and loaded the task while the previous variant was scored (--wait)
    result["timing"] = {"load_s": round(time.perf_counter() - start, 3), "started_early": early}
    result["memory"]["loaded_rss_mb"] = rss_now_mb()
    if backend.device_allocated_mb() is not None:
        result["memory"]["cuda_loaded_mb"] = backend.device_allocated_mb()
    result["size"] = backend.size()
    if backend.note:
        result["note"] = backend.note
    return backend, task


def measure(spec: dict[str, Any], result: dict[str, Any], save: Callable[[], None],
            loaded_task: tuple[dict[str, Any], Any, float] | None = None, lines=None) -> None:
    """Fill `result` (quality, latency, memory, size) phase by phase, calling `save` after each one.

    spec: kind, backend, model_dir, tokenizer_dir, load {attention, dtype, provider}, device, threads,
    task {spec, text_column, label_column, split_seed}, split, max_length, eval_batch_size,
    max_eval_samples, batch_sizes, seq_lengths, warmup, repeats, min_repeats, max_cell_s, quality,
    latency, interleave (latency: serve the harness's TIME requests on `lines`, default stdin).
    loaded_task: (its spec, the task, the RSS before it) loaded while the process waited for its turn
    (wait_for_turn), used when the spec names the same task.
    """
    backend, task = load(spec, result, loaded_task)
    save()
    test = task.test.take(spec.get("max_eval_samples"))
    if spec.get("quality", True):
        if task.kind not in QUALITY:
            raise ValueError(f"quality for '{task.kind}' tasks is not measured yet: set measure.quality: false")
        split = getattr(task, spec.get("split", "test")).take(spec.get("max_eval_samples"))
        phase(f"quality on {len(split)} {spec.get('split', 'test')} texts")
        start = time.perf_counter()
        result["quality"] = QUALITY[task.kind](backend, task, split, spec)
        result["timing"]["quality_s"] = round(time.perf_counter() - start, 3)
        save()

    if task.kind == "lm" and spec.get("generation") is not False:  # TTFT and decode tokens/s (lean.bench.lm)
        start = time.perf_counter()
        result["generation"] = generation(backend, test, spec, save)
        result["timing"]["generation_s"] = round(time.perf_counter() - start, 3)
        save()

    if spec.get("latency", True):
        run_latency(backend, test, spec, result, save, sys.stdin if lines is None else lines, phase)

    result["memory"]["peak_rss_mb"] = rss_peak_mb()
    result["memory"]["model_rss_mb"] = round(result["memory"]["peak_rss_mb"] - result["memory"]["bare_rss_mb"], 1)
    if backend.device_peak_mb() is not None:
        result["memory"]["cuda_peak_mb"] = backend.device_peak_mb()


def classify_error(e: BaseException) -> str:
    """'oom' for out-of-memory errors (CUDA or host), else 'failed'."""
    name = type(e).__name__
    if isinstance(e, MemoryError) or name == "OutOfMemoryError" or "out of memory" in str(e).lower():
        return "oom"
    return "failed"


def error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def wait_for_turn(backend: str, task_file: str, lines) -> tuple[dict[str, Any], Any, float] | None:
    """A subprocess started while the previous variant is still being scored: import the backend's
    libraries and load the task (TASK.json: the spec's "task"), seconds of one core that would otherwise
    come after the previous variant; then wait for GO (the harness wrote the spec). -> (task spec, task,
    RSS after the imports), or None when the harness closed stdin instead (the variant is not measured)."""
    for module in BACKENDS[backend].preload:  # what measure() imports before it takes the bare RSS, no more
        importlib.import_module(module)
    import lean.data  # noqa: F401

    bare_rss_mb = rss_now_mb()  # before the task, as measure() takes it
    t = json.loads(Path(task_file).read_text())
    task = load_spec_task(t)
    return (t, task, bare_rss_mb) if lines.readline().strip() == protocol.GO else None


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started from a background job
    argv = sys.argv[1:] if argv is None else argv
    loaded_task = None
    if len(argv) == 5 and argv[2] == "--wait":
        if argv[3] not in BACKENDS:
            print(f"--wait takes one of {', '.join(BACKENDS)}, got '{argv[3]}'", file=sys.stderr)
            return 2
        loaded_task = wait_for_turn(argv[3], argv[4], sys.stdin)
        if loaded_task is None:
            return 0
        argv = argv[:2]
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    result: dict[str, Any] = {"status": "running"}

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, out)

    try:
        measure(spec, result, save, loaded_task)
        result["status"] = "ok"
    except Exception as e:  # any failure is this variant's row, with its error; the harness goes on
        traceback.print_exc()
        result["status"] = classify_error(e)
        result["error"] = error_text(e)
    save()
    return 0


if __name__ == "__main__":
    code = main()
    # the result is written: skip the interpreter's teardown (freeing a loaded torch or onnxruntime model
    # takes about a second per process, and the harness waits for every process to exit)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # the harness has gone
            pass
    os._exit(code)
