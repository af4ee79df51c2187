"""The export gate's latency check: is the optimized or quantized model faster than the plainer one here?

An optimization level or int8 method can be slower than the plainer export on a given CPU (fused
kernels that lose to MLAS's GEMMs at small sizes, QDQ graphs that requantize between layers). After
validation the step times both graphs on the export machine and records the ratio; a slower choice is
a `warning:` line of `lean export` and `latency_check.warning` in the manifest, not a failure (the
model is still correct). The plainer model of each choice:

    --optimize O1..O3                 the same fp32 graph, unfused
    --quantize int8-dynamic           fp32 (the graph it quantized)
    --optimize ... --quantize int8-dynamic    int8-dynamic of the unfused graph
    --quantize int8-static            int8-dynamic of the same graph

Timing: one real text padded to max_length at batch 1 (the b1 cell `lean bench` reports), sessions
as lean.runtime builds them, warm-up calls, then rounds that alternate the two models (so drift on a
shared machine hits both), the median of each model's per-round means.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

ROUNDS = 9  # alternating rounds; the median of nine resists a noisy neighbour for a round or two
CALLS = 8  # calls per model per round
WARMUP = 3


def plainer(config) -> tuple[str, str] | None:
    """(a label for the plainer model, the stage that builds it: 'fp32' or 'int8-dynamic'), or None."""
    if config.fp16:
        return None  # fp16 runs on CUDA: the fp32 comparison there is lean bench's
    if config.quantize == "int8-static":
        return "int8-dynamic of the same graph", "int8-dynamic"
    if config.quantize and config.optimize:
        return f"int8-dynamic without --optimize {config.optimize}", "int8-dynamic"
    if config.quantize:
        return "fp32", "fp32"
    if config.optimize:
        return f"fp32 without --optimize {config.optimize}", "fp32"
    return None


def what(config) -> str:
    """The user's choice in words, as the warning names it."""
    parts = [f"--optimize {config.optimize}"] if config.optimize else []
    return " ".join(parts + ([f"--quantize {config.quantize}"] if config.quantize else []))


def session(file: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()  # as lean.runtime builds its sessions
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def time_interleaved(files: dict[str, Path], feed: dict, threads: int, rounds: int = ROUNDS,
                     calls: int = CALLS) -> dict[str, float]:
    """Median ms per call of each graph, timed in alternating rounds in this process."""
    sessions = {name: session(file, threads) for name, file in files.items()}
    feeds = {name: {i.name: feed[i.name] for i in s.get_inputs()} for name, s in sessions.items()}
    for name, s in sessions.items():
        for _ in range(WARMUP):
            s.run(None, feeds[name])
    per_round: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):  # alternate who goes first
            start = time.perf_counter()
            for _ in range(calls):
                sessions[name].run(None, feeds[name])
            per_round[name].append((time.perf_counter() - start) * 1000 / calls)
    return {name: statistics.median(values) for name, values in per_round.items()}


def check(config, model_file: Path, plainer_file: Path, label: str, feed: dict, threads: int) -> dict[str, Any]:
    """The latency_check record: both medians, the speedup over the plainer model and, when slower, a warning."""
    ms = time_interleaved({"model": model_file, "plainer": plainer_file}, feed, threads)
    speedup = ms["plainer"] / ms["model"] if ms["model"] > 0 else float("inf")
    batch, length = (int(v) for v in next(iter(feed.values())).shape)
    record = {"plainer": label, "batch_size": batch, "seq_len": length, "threads": threads,
              "rounds": ROUNDS, "calls_per_round": CALLS, "ms": round(ms["model"], 3),
              "plainer_ms": round(ms["plainer"], 3), "speedup": round(speedup, 3), "slower": speedup < 1.0}
    if record["slower"]:
        record["warning"] = (f"{what(config)} is slower here than {label}: {ms['model']:.2f} vs {ms['plainer']:.2f} "
                             f"ms per call ({speedup:.2f}x) at batch {batch} x {length}, {threads} threads; "
                             f"{_advice(config)} (see docs/export.md)")
    return record


def _advice(config) -> str:
    if config.quantize == "int8-static":
        return "--quantize int8-dynamic is the faster choice on this machine"
    if config.optimize:
        return f"drop --optimize {config.optimize} on this machine"
    return "fp32 is the faster choice on this machine"
