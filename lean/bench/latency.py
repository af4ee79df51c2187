"""The latency scenario: real test batches per (batch size, length) cell, warm-up, timed calls.

    cells = prepare_cells(backend, test, spec)
    entry["times"], entry["warmed"] = time_cell(backend.forward, backend.sync, entry["batches"], 3, 60, 8, 3.0)
    serve_latency(backend, cells, spec, sys.stdin)     # interleaved: answer the harness's TIME requests

Child side of lean.bench. Inputs are tokenized once, outside any timed region; the device is
synchronised before the clock is read.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from lean.bench import protocol
from lean.bench.backends import Backend
from lean.bench.inputs import latency_texts, token_lengths
from lean.bench.stats import percentiles, throughput

MAX_DISTINCT_BATCHES = 8  # latency cycles through this many different real batches per cell
WARM_AFTER_ONE_S = 0.1  # a call this slow leaves its cell warm: allocation and kernel choice are done once


def warm_up(forward: Callable[[Any], None], sync: Callable[[], None], batches: list, warmup: int,
            max_cell_s: float | None) -> int:
    """`warmup` untimed calls (fewer once they take max_cell_s / 2 seconds, one at least; one when a call
    takes WARM_AFTER_ONE_S or more); -> calls made."""
    start, warmed = time.perf_counter(), 0
    for w in range(warmup):
        call_start = time.perf_counter()
        forward(batches[w % len(batches)])
        sync()
        warmed += 1
        now = time.perf_counter()
        if now - call_start >= WARM_AFTER_ONE_S or (max_cell_s is not None and now - start >= max_cell_s / 2):
            break
    return warmed


def timed_call(forward: Callable[[Any], None], sync: Callable[[], None], batch) -> float:
    """Seconds for one call, the device synchronised before the clock is read."""
    start = time.perf_counter()
    forward(batch)
    sync()
    return time.perf_counter() - start


def time_cell(forward: Callable[[Any], None], sync: Callable[[], None], batches: list, warmup: int, repeats: int,
              min_repeats: int, max_cell_s: float | None) -> tuple[list[float], int]:
    """Seconds per call, after warm-up (see warm_up), up to `repeats` calls, stopping once they sum to
    `max_cell_s` (but never before `min_repeats`)."""
    warmed = warm_up(forward, sync, batches, warmup, max_cell_s)
    times: list[float] = []
    for r in range(repeats):
        times.append(timed_call(forward, sync, batches[r % len(batches)]))
        if max_cell_s is not None and sum(times) >= max_cell_s and len(times) >= min_repeats:
            break
    return times, warmed


def prepare_cells(backend: Backend, test, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (batch, length) cell of the grid with its real input batches, tokenized once (outside any
    timed region); a cell longer than the model takes is marked skipped."""
    lengths = token_lengths(list(test.texts), spec.get("tokenizer_dir") or spec.get("model_dir"))
    cells = []
    for batch_size in spec["batch_sizes"]:
        for seq_length in spec["seq_lengths"]:
            cell: dict[str, Any] = {"batch_size": batch_size, "seq_length": seq_length}
            entry: dict[str, Any] = {"cell": cell, "times": [], "warmed": None}
            if backend.max_positions and seq_length > backend.max_positions:
                cell["skipped"] = f"the model takes at most {backend.max_positions} tokens"
            else:
                n_batches = max(1, min(MAX_DISTINCT_BATCHES, spec["warmup"] + spec["repeats"]))
                texts, entry["inputs"] = latency_texts(list(test.texts), lengths, batch_size, seq_length, n_batches)
                entry["batches"] = [backend.prepare(b, seq_length) for b in texts]
            cells.append(entry)
    return cells


def finish_cell(entry: dict[str, Any]) -> dict[str, Any]:
    """The cell's figures from its timed calls."""
    cell = entry["cell"]
    if "skipped" in cell or not entry["times"]:
        return cell
    cell.update(percentiles(entry["times"]))
    cell["warmup"] = entry["warmed"]
    cell["throughput_sps"] = throughput(cell["batch_size"], cell["median_ms"])
    cell["inputs"] = entry["inputs"]
    return cell


def serve_latency(backend: Backend, cells: list[dict[str, Any]], spec: dict[str, Any], lines) -> None:
    """Interleaved timing: answer the harness's TIME requests (lean.bench.protocol) until it says END.

    A request asks for U untimed calls, then K timed calls of the (B, S) cell (warmed up on its first
    request), answered with each call's seconds, or SKIPPED for a cell this variant does not measure.
    The harness asks every loaded variant in turn, so a slow spell of a shared machine falls on all
    of them alike instead of on whichever variant happened to be running.
    """
    by_key = {(e["cell"]["batch_size"], e["cell"]["seq_length"]): e for e in cells}
    print(protocol.READY, flush=True)
    for line in lines:
        request = protocol.parse_time_request(line)
        if request is None:
            break
        entry = by_key.get((request.batch_size, request.seq_length))
        if entry is None or "skipped" in entry["cell"]:
            print(protocol.times_reply(request.batch_size, request.seq_length, None), flush=True)
            continue
        if entry["warmed"] is None:
            entry["warmed"] = warm_up(backend.forward, backend.sync, entry["batches"], spec["warmup"],
                                      spec.get("max_cell_s"))
        for u in range(request.untimed):
            backend.forward(entry["batches"][u % len(entry["batches"])])
            backend.sync()
        done, n = len(entry["times"]), len(entry["batches"])  # the timed calls go on through the distinct batches
        new = [timed_call(backend.forward, backend.sync, entry["batches"][(done + i) % n])
               for i in range(request.calls)]
        entry["times"].extend(new)
        print(protocol.times_reply(request.batch_size, request.seq_length, new), flush=True)


def run_latency(backend: Backend, test, spec: dict[str, Any], result: dict[str, Any], save, lines, phase) -> None:
    """result["latency"]: every cell, interleaved (spec["interleave"]: answering `lines`) or one after another."""
    cells = prepare_cells(backend, test, spec)
    start = time.perf_counter()
    if spec.get("interleave"):
        phase("loaded: latency waits for the other variants")
        serve_latency(backend, cells, spec, lines)
    else:
        for i, entry in enumerate(cells):
            if "skipped" not in entry["cell"]:
                phase(f"latency batch {entry['cell']['batch_size']} x {entry['cell']['seq_length']} tokens")
                entry["times"], entry["warmed"] = time_cell(
                    backend.forward, backend.sync, entry["batches"], spec["warmup"], spec["repeats"],
                    spec.get("min_repeats", 1), spec.get("max_cell_s"))
            result["latency"] = [finish_cell(e) for e in cells[:i + 1]]  # a timeout keeps the cells done
            save()
    result["latency"] = [finish_cell(entry) for entry in cells]
    result["timing"]["latency_s"] = round(time.perf_counter() - start, 3)
    save()
