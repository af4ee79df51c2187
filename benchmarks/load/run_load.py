"""Load test of `lean serve` on loopback: concurrency sweep with batching on and off, the in-process
onnxruntime limit, p99/p50 at half of peak, overload, and a soak at 80% of peak.

    pip install -e ".[load]"          # lean serve and the aiohttp client
    python benchmarks/load/run_load.py MODEL_DIR -o benchmarks/results/<date>-cpu-serve-load
    python benchmarks/load/run_load.py MODEL_DIR -o /tmp/quick --quick        # ~1 min smoke run

Inputs are the bbc-news test split (real articles, each over 128 tokens, so every request is a
full-length text). Every phase is bounded in time; the servers are started here on free loopback
ports and stopped with SIGTERM (their exit status is recorded). Writes load.json and load.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from client import closed_loop, open_loop  # noqa: E402
from report import markdown  # noqa: E402

CONCURRENCY = (1, 8, 32, 128)
MAX_QUEUE = 128  # texts a server may hold waiting: four batches of 32, so an overload meets 429s, not timeouts


def uptime() -> str:
    """`uptime`'s line: load averages over 1, 5 and 15 minutes (the machine is shared)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, batch: int, wait_ms: float, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "lean.cli", "serve", f"model={model}", "--port", str(port),
           "--max-batch-size", str(batch), "--max-wait-ms", str(wait_ms), "--max-queue", str(MAX_QUEUE), *extra]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=2) as r:
                if r.status == 200:
                    return server, base
        except OSError:
            pass
        time.sleep(0.3)
    server.kill()
    raise SystemExit("server not ready within 180 s")


def stop_server(server: subprocess.Popen) -> int:
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        return -9


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def in_process_limit(model_dir: Path, texts: list[str], batch: int, seconds: float, spinning: bool) -> dict:
    """Texts per second of lean.runtime's predict (tokenize + run + softmax) at `batch`, no HTTP."""
    from lean.runtime import load

    model = load(model_dir, session_config={"session.intra_op.allow_spinning": "1" if spinning else "0"})
    model.predict(texts[:batch], batch_size=batch)  # warm-up
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        model.predict(chunk, batch_size=batch)
        done, i = done + batch, i + batch
    elapsed = time.perf_counter() - start
    return {"batch_size": batch, "texts": done, "seconds": round(elapsed, 3), "throughput_tps": round(done / elapsed, 2),
            "threads": model.threads, "provider": model.provider, "ort_spinning": spinning}


def sweep(model: Path, texts: list[str], batch: int, wait_ms: float, seconds: float, extra: list[str]) -> dict:
    server, base = start_server(model, batch, wait_ms, extra)
    url = f"{base}/v1/models/model/predict"
    cells = []
    try:
        for c in CONCURRENCY:
            outcome = asyncio.run(closed_loop(url, texts, c, seconds))
            cells.append({"concurrency": c, **outcome.summary()})
            print(f"  batch {batch:3d} concurrency {c:3d}: {cells[-1]['throughput_rps']:8.1f} req/s  "
                  f"p50 {cells[-1]['p50_ms']} ms  p99 {cells[-1]['p99_ms']} ms  {cells[-1]['statuses']}", flush=True)
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        code = stop_server(server)
    return {"max_batch_size": batch, "max_wait_ms": wait_ms, "cells": cells, "exit_code": code,
            "mean_batch_size": mean_batch(metrics)}


def mean_batch(metrics: str) -> float | None:
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("lean_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("lean_batch_size_count"):
            count += float(line.split()[-1])
    return round(total / count, 2) if count else None


def open_phases(model: Path, texts: list[str], peak: float, args, extra: list[str]) -> dict:
    """Half of peak (tail ratio), overload (3x peak or more: 429s, no 5xx), soak (80% of peak: errors, memory)."""
    server, base = start_server(model, args.batch, args.wait_ms, extra)
    url = f"{base}/v1/models/model/predict"
    out = {}
    try:
        half = asyncio.run(open_loop(url, texts, peak / 2, args.open_seconds, seed=1)).summary()
        half["rate_rps"] = round(peak / 2, 2)
        half["p99_over_p50"] = round(half["p99_ms"] / half["p50_ms"], 2) if half["p50_ms"] else None
        out["half_peak"] = half
        print(f"  half of peak ({peak / 2:.1f}/s): {half}", flush=True)
        # enough arrivals to overflow the queue twice over even if the peak was overestimated
        rate = max(3 * peak, peak + 2 * MAX_QUEUE / args.overload_seconds)
        over = asyncio.run(open_loop(url, texts, rate, args.overload_seconds, seed=2)).summary()
        over["rate_rps"] = round(rate, 2)
        out["overload"] = over
        print(f"  overload ({peak * 2:.1f}/s): {over['statuses']}", flush=True)
        time.sleep(3)  # let the overload's queue drain before the soak starts
        memory = [(0.0, rss_mib(server.pid))]

        def sample(elapsed: float):
            if elapsed - memory[-1][0] >= 5:
                memory.append((round(elapsed, 1), round(rss_mib(server.pid), 1)))

        soak = asyncio.run(open_loop(url, texts, peak * 0.8, args.soak_seconds, seed=3, on_tick=sample)).summary()
        memory.append((args.soak_seconds, round(rss_mib(server.pid), 1)))
        soak["rate_rps"] = round(peak * 0.8, 2)
        minute = max(1, len(memory) // 5)
        soak["rss_mib"] = {"first": memory[1][1] if len(memory) > 1 else memory[0][1], "last": memory[-1][1],
                           "max": max(m for _, m in memory),
                           "growth_last_fifth_vs_first_fifth": round(
                               sum(m for _, m in memory[-minute:]) / minute - sum(m for _, m in memory[1:minute + 1]) / minute, 1),
                           "samples": memory}
        out["soak"] = soak
        print(f"  soak ({peak * 0.8:.1f}/s, {args.soak_seconds} s): {soak['statuses']} rss {soak['rss_mib']['first']} -> "
              f"{soak['rss_mib']['last']} MiB", flush=True)
    finally:
        out["exit_code"] = stop_server(server)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="exported ONNX classifier directory")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=32, help="--max-batch-size of the batching server")
    parser.add_argument("--wait-ms", type=float, default=5.0, help="--max-wait-ms of the batching server")
    parser.add_argument("--cell-seconds", type=float, default=12.0)
    parser.add_argument("--open-seconds", type=float, default=30.0)
    parser.add_argument("--overload-seconds", type=float, default=15.0)
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: every phase a few seconds")
    parser.add_argument("--overload-only", type=float, metavar="RATE",
                        help="only an overload phase at RATE requests/s against a batching server")
    parser.add_argument("--curve-only", action="store_true",
                        help="only lean.runtime's in-process texts/s at batch 1, 4, 8, 16, 32 (spinning off)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra option for lean serve (repeat)")
    args = parser.parse_args()
    if args.overload_only:
        return overload_only(args)
    if args.curve_only:
        return curve_only(args)
    if args.quick:
        args.cell_seconds, args.open_seconds, args.overload_seconds, args.soak_seconds = 3, 5, 3, 10
    from lean.data import load_task

    texts = load_task("bbc-news").test.texts
    load_before = uptime()
    print(f"load before: {load_before}", flush=True)
    started = datetime.now(timezone.utc)
    results = {"date": started.isoformat(timespec="seconds"), "model": str(args.model.resolve()),
               "model_chain": model_chain(args.model), "load_before": load_before, "machine": machine(),
               "commit": git_commit(), "texts": f"bbc-news test split ({len(texts)} articles), one text per request",
               "settings": vars(args) | {"model": str(args.model), "output": str(args.output)}}
    # the limit is the better of onnxruntime's two thread modes (spinning helps a lone caller on idle cores)
    results["in_process"] = [in_process_limit(args.model, texts, b, 4 if args.quick else 10, spin)
                             for b in (1, args.batch) for spin in (True, False)]
    print(f"  in process: {results['in_process']}", flush=True)
    results["batching_on"] = sweep(args.model, texts, args.batch, args.wait_ms, args.cell_seconds, args.server_arg)
    results["batching_off"] = sweep(args.model, texts, 1, 0.0, args.cell_seconds, args.server_arg)
    # peak: the best saturated throughput (concurrency 1 measures latency, not capacity)
    peak = max(c["throughput_rps"] for c in results["batching_on"]["cells"] if c["concurrency"] >= 8)
    results["peak_rps"] = peak
    results["open_loop"] = open_phases(args.model, texts, peak, args, args.server_arg)
    results["load_after"] = uptime()
    results["targets"] = targets(results)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "load.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "load.md").write_text(markdown(results))
    print(json.dumps(results["targets"], indent=2))
    print(f"load after: {results['load_after']}\nwrote {args.output}/load.json")


def overload_only(args) -> None:
    from lean.data import load_task

    texts = load_task("bbc-news").test.texts
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_before": uptime(),
              "commit": git_commit(), "model": str(args.model.resolve()), "max_queue": MAX_QUEUE}
    server, base = start_server(args.model, args.batch, args.wait_ms, args.server_arg)
    try:
        outcome = asyncio.run(open_loop(f"{base}/v1/models/model/predict", texts, args.overload_only,
                                        args.overload_seconds, seed=2))
        result["overload"] = {**outcome.summary(), "rate_rps": args.overload_only}
    finally:
        result["exit_code"] = stop_server(server)
    result["load_after"] = uptime()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "overload.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def curve_only(args) -> None:
    from lean.data import load_task

    texts = load_task("bbc-news").test.texts
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_before": uptime(),
              "commit": git_commit(), "model": str(args.model.resolve())}
    result["in_process"] = [in_process_limit(args.model, texts, b, 6, False) for b in (1, 4, 8, 16, 32)]
    result["load_after"] = uptime()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "batch_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def targets(r: dict) -> dict:
    on = {c["concurrency"]: c for c in r["batching_on"]["cells"]}
    off = {c["concurrency"]: c for c in r["batching_off"]["cells"]}
    batch = r["batching_on"]["max_batch_size"]
    limit = max(p["throughput_tps"] for p in r["in_process"] if p["batch_size"] == batch)
    half, over, soak = r["open_loop"]["half_peak"], r["open_loop"]["overload"], r["open_loop"]["soak"]
    return {
        "c32_batched_over_unbatched": round(on[32]["throughput_rps"] / max(off[32]["throughput_rps"], 1e-9), 2),
        "c32_batched_over_in_process": round(on[32]["throughput_rps"] / limit, 2),
        "half_peak_p99_over_p50": half["p99_over_p50"],
        "overload_5xx": over["errors_5xx"], "overload_429": over["statuses"].get("429", 0),
        "soak_errors": soak["requests"] - soak["ok"], "soak_rss_growth_mib": soak["rss_mib"]["growth_last_fifth_vs_first_fifth"],
        "met": {"2x_unbatched": on[32]["throughput_rps"] >= 2 * off[32]["throughput_rps"],
                "80pct_in_process": on[32]["throughput_rps"] >= 0.8 * limit,
                "p99_le_3x_p50": half["p99_over_p50"] is not None and half["p99_over_p50"] <= 3,
                "no_5xx_overloaded": over["errors_5xx"] == 0, "soak_zero_errors": soak["requests"] == soak["ok"]},
    }


def model_chain(model: Path) -> list[dict]:
    chain, path = [], model.resolve()
    while path and (path / "lean.json").is_file() and len(chain) < 10:
        m = json.loads((path / "lean.json").read_text())
        chain.append({"dir": str(path), "step": m.get("step"), "config": m.get("config")})
        parent = m.get("parent")
        path = Path(parent).resolve() if isinstance(parent, str) else (Path(parent["path"]).resolve() if isinstance(parent, dict) and parent.get("path") else None)
    return chain


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    import onnxruntime

    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
