"""Attention throughput: lean's fused Triton kernel against torch SDPA and each of its backends.

    python benchmarks/bench_attention.py                       # default grid, prints a table
    python benchmarks/bench_attention.py --seq 8192 --head-dim 128 --no-causal --dtype bf16 \
        --json results/attention.json --markdown results/attention.md
    pytest benchmarks/bench_attention.py --benchmark-only      # pytest-benchmark version

TFLOP/s come from an explicit FLOP count, not from a profiler:
    forward   4 * B * H * Sq * Sk * D     (two matmuls, QK^T and PV, 2 FLOPs per multiply-add)
              halved when causal (half the score matrix is skipped)
    backward  2.5 x forward               (five matmuls instead of two)
Timing uses CUDA events around each call after warm-up runs, and reports the median.
Needs a CUDA GPU; on a machine without one it refuses, except with `--device cpu`, which runs tiny
shapes through Triton's interpreter to check the script itself (its timings mean nothing).
`--budget-s` stops starting new rows once that many seconds are spent; the rows left are recorded
as not run. The grid runs bf16 before fp16 and head dim 128 before 64, so a cut loses fp16 first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

from lean.errors import first_line

NEEDS_CUDA = "the attention benchmark needs a CUDA GPU (timings of the Triton kernel on CPU mean nothing)"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")
PROVIDERS = ("lean", "sdpa") + tuple(f"sdpa-{b}" for b in SDPA_BACKENDS)


def attention_flops(batch, heads, q_len, k_len, head_dim, causal, mode):
    """FLOPs of one call: forward 4*B*H*Sq*Sk*D (halved if causal); fwd_bwd adds 2.5x that."""
    forward = 4.0 * batch * heads * q_len * k_len * head_dim
    if causal:
        forward *= 0.5
    return forward * (1.0 + 2.5) if mode == "fwd_bwd" else forward


def cpu_time_ms(fn, warmup=1, reps=3):
    """Median wall milliseconds of fn() on the CPU (for the dry run only)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cuda_time_ms(fn, warmup=5, reps=20):
    """Median milliseconds of fn() timed with CUDA events, after `warmup` untimed calls (which also
    trigger Triton compilation and autotuning)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _sdpa_call(provider, q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gqa = q.shape[1] != k.shape[1]
    kwargs = {"is_causal": causal, "enable_gqa": True} if gqa else {"is_causal": causal}
    if provider == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[provider.removeprefix("sdpa-")]
    with sdpa_kernel(backends=[backend]):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)


def make_call(provider, q, k, v, causal, mode):
    """A zero-argument function running one forward (or forward+backward) of `provider`."""
    if provider == "lean":
        from lean.kernels import flash_attention

        def forward():
            return flash_attention(q, k, v, causal=causal)
    else:
        def forward():
            return _sdpa_call(provider, q, k, v, causal)

    if mode == "fwd":
        def call():
            with torch.no_grad():
                forward()
        return call
    grad_out = torch.randn_like(q)

    def call():
        q.grad = k.grad = v.grad = None
        forward().backward(grad_out)
    return call


@dataclass
class Row:
    provider: str
    mode: str
    dtype: str
    causal: bool
    batch: int
    heads: int
    kv_heads: int
    seq: int
    head_dim: int
    ms: float | None
    tflops: float | None
    max_abs_diff_vs_sdpa: float | None = None
    error: str | None = None
    skipped: str | None = None


def make_inputs(batch, heads, kv_heads, seq, head_dim, dtype, requires_grad, device="cuda"):
    torch.manual_seed(0)
    q = torch.randn(batch, heads, seq, head_dim, device=device, dtype=dtype, requires_grad=requires_grad)
    k = torch.randn(batch, kv_heads, seq, head_dim, device=device, dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(batch, kv_heads, seq, head_dim, device=device, dtype=dtype, requires_grad=requires_grad)
    return q, k, v


def measure(provider, mode, dtype_name, causal, batch, heads, kv_heads, seq, head_dim, warmup=5, reps=20,
            device="cuda"):
    shape = dict(provider=provider, mode=mode, dtype=dtype_name, causal=causal, batch=batch, heads=heads,
                 kv_heads=kv_heads, seq=seq, head_dim=head_dim)
    q, k, v = make_inputs(batch, heads, kv_heads, seq, head_dim, DTYPES[dtype_name], mode == "fwd_bwd", device)
    timer = cuda_time_ms if device == "cuda" else cpu_time_ms
    try:
        diff = None
        if provider == "lean":
            with torch.no_grad():
                diff = (make_forward_output("lean", q, k, v, causal) - make_forward_output("sdpa", q, k, v, causal)
                        ).abs().max().item()
        ms = timer(make_call(provider, q, k, v, causal, mode), warmup=warmup, reps=reps)
    except Exception as exc:  # a backend refusing the shape/dtype, out of memory: one row marked, run goes on
        if device == "cuda":
            torch.cuda.empty_cache()
        return Row(**shape, ms=None, tflops=None, error=first_line(exc, 120))
    flops = attention_flops(batch, heads, seq, seq, head_dim, causal, mode)
    return Row(**shape, ms=ms, tflops=flops / (ms * 1e-3) / 1e12, max_abs_diff_vs_sdpa=diff)


def make_forward_output(provider, q, k, v, causal):
    if provider == "lean":
        from lean.kernels import flash_attention

        return flash_attention(q, k, v, causal=causal)
    return _sdpa_call(provider, q, k, v, causal)


def default_batch(seq, tokens=16384):
    # A fixed 16k tokens per batch, as in flash-attention's own benchmarks.
    return max(1, tokens // seq)


def default_heads(head_dim, hidden=2048):
    return max(1, hidden // head_dim)


def environment():
    # A copy of the tree without .git (a lent GPU machine) passes the commit in LEAN_GIT_COMMIT.
    commit = os.environ.get("LEAN_GIT_COMMIT")
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                          cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except OSError:
        commit = None
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (Triton interpreter)",
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_commit": commit,
    }


def format_table(rows):
    header = ["mode", "dtype", "causal", "B", "H", "Hkv", "seq", "D", "provider", "ms", "TFLOP/s", "vs sdpa", "note"]
    best_sdpa = {}
    for r in rows:
        if r.provider == "sdpa" and r.tflops:
            best_sdpa[(r.mode, r.dtype, r.causal, r.batch, r.heads, r.kv_heads, r.seq, r.head_dim)] = r.tflops
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        key = (r.mode, r.dtype, r.causal, r.batch, r.heads, r.kv_heads, r.seq, r.head_dim)
        ratio = f"{r.tflops / best_sdpa[key]:.2f}x" if r.tflops and key in best_sdpa else ""
        note = r.skipped or r.error or (
            f"max|diff| {r.max_abs_diff_vs_sdpa:.1e}" if r.max_abs_diff_vs_sdpa is not None else "")
        cells = [r.mode, r.dtype, str(r.causal), str(r.batch), str(r.heads), str(r.kv_heads), str(r.seq),
                 str(r.head_dim), r.provider, f"{r.ms:.3f}" if r.ms else "-", f"{r.tflops:.1f}" if r.tflops else "-",
                 ratio, note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid(args):
    """(mode, dtype, causal, batch, heads, kv_heads, seq, head_dim, provider) in the order they run."""
    for dtype_name in args.dtype:
        for head_dim in args.head_dim:
            for causal in args.causal:
                for mode in args.mode:
                    for seq in args.seq:
                        heads = args.heads or default_heads(head_dim)
                        for provider in args.providers:
                            yield (mode, dtype_name, causal, args.batch or default_batch(seq), heads,
                                   args.kv_heads or heads, seq, head_dim, provider)


def write_outputs(args, rows, env):
    """(Re)write the JSON and markdown; each file is replaced whole, so a killed run leaves the last rows."""
    table = format_table(rows)
    outputs = []
    if args.json:
        outputs.append((args.json, json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=2)))
    if args.markdown:
        outputs.append((args.markdown, f"Attention throughput on {env['device']} (torch {env['torch']}, "
                                       f"triton {env['triton']}, commit {env['git_commit']})\n\n{table}\n"))
    for path, text in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--head-dim", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--batch", type=int, default=None, help="default: 16384 // seq")
    parser.add_argument("--heads", type=int, default=None, help="default: 2048 // head_dim")
    parser.add_argument("--kv-heads", type=int, default=None, help="default: heads (no GQA)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), nargs="+", default=["bf16", "fp16"])
    parser.add_argument("--mode", choices=["fwd", "fwd_bwd"], nargs="+", default=["fwd", "fwd_bwd"])
    parser.add_argument("--causal", dest="causal", action="store_const", const=[True], default=[False, True])
    parser.add_argument("--no-causal", dest="causal", action="store_const", const=[False])
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=None, help="start no new row after this many seconds")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: tiny shapes through Triton's interpreter, to check the script (timings meaningless)")
    parser.add_argument("--json", type=Path, help="write rows and environment as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the table as markdown here")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"bench_attention: {NEEDS_CUDA}", file=sys.stderr)
        return 2
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # read when lean.kernels builds its kernels

    env = environment()
    started = time.monotonic()
    rows = []
    for mode, dtype_name, causal, batch, heads, kv_heads, seq, head_dim, provider in grid(args):
        if args.budget_s is not None and time.monotonic() - started > args.budget_s:
            rows.append(Row(provider, mode, dtype_name, causal, batch, heads, kv_heads, seq, head_dim, None, None,
                            skipped=f"not run: the {args.budget_s:.0f} s budget was spent"))
            continue
        row = measure(provider, mode, dtype_name, causal, batch, heads, kv_heads, seq, head_dim,
                      warmup=args.warmup, reps=args.reps, device=args.device)
        rows.append(row)
        shown = f"{row.tflops:7.1f} TFLOP/s" if row.tflops else f"n/a ({row.error})"
        print(f"{mode:8s} {dtype_name} causal={causal!s:5s} B={batch} H={heads} "
              f"S={seq} D={head_dim} {provider:15s} {shown}", file=sys.stderr)
        write_outputs(args, rows, env)
    print(write_outputs(args, rows, env))
    return 0


# --- pytest-benchmark ------------------------------------------------------------------------

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_CUDA)

BENCH_CASES = [
    (mode, dtype_name, causal, seq, head_dim)
    for mode in ("fwd", "fwd_bwd")
    for dtype_name in ("bf16", "fp16")
    for causal in (False, True)
    for seq, head_dim in ((2048, 64), (2048, 128), (8192, 128))
]


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["lean", "sdpa"])
@pytest.mark.parametrize("mode, dtype_name, causal, seq, head_dim", BENCH_CASES)
def test_attention_throughput(benchmark, provider, mode, dtype_name, causal, seq, head_dim):
    batch, heads = default_batch(seq), default_heads(head_dim)
    q, k, v = make_inputs(batch, heads, heads, seq, head_dim, DTYPES[dtype_name], mode == "fwd_bwd")
    call = make_call(provider, q, k, v, causal, mode)
    for _ in range(3):  # compile and autotune outside the timed rounds
        call()
    torch.cuda.synchronize()

    def synced():
        call()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=20, iterations=1, warmup_rounds=2)
    flops = attention_flops(batch, heads, seq, seq, head_dim, causal, mode)
    benchmark.extra_info.update(batch=batch, heads=heads, seq=seq, head_dim=head_dim, causal=causal,
                                dtype=dtype_name, mode=mode, flops=flops,
                                tflops_median=flops / benchmark.stats.stats.median / 1e12)


def test_flop_count():
    # 4*B*H*S*S*D forward, halved for causal; backward 2.5x forward.
    assert attention_flops(1, 1, 8, 8, 4, False, "fwd") == 4 * 8 * 8 * 4
    assert attention_flops(2, 3, 8, 8, 4, True, "fwd") == 2 * 3 * 8 * 8 * 4 * 2
    assert math.isclose(attention_flops(1, 1, 8, 8, 4, False, "fwd_bwd"), 3.5 * 4 * 8 * 8 * 4)


def test_refuses_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["--seq", "128"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


if __name__ == "__main__":
    sys.exit(main())
