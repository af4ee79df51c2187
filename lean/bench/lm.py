"""Language-model figures for `lean bench`: sliding-window perplexity and greedy generation speed,
for PyTorch and ONNX (KV-cache) variants alike, from the test split of an `lm` task.

    measure: {perplexity: {window: 256, stride: 128, max_tokens: 20000},
              generation: {batch_sizes: [1, 8], new_tokens: 32, prompt_tokens: 64, repeats: 3}}

lean.bench.measure calls `lm_quality` (QUALITY["lm"]) and `generation`; lean.bench.report calls
`lm_ratios`, `lm_markdown` and `pareto_png` for runs whose task kind is "lm". Prompts are the first
`prompt_tokens` token ids of real test texts (texts shorter than that are skipped), fed as ids to
both runtimes, so PyTorch's and ONNX's greedy outputs can be compared token for token.
Tests: tests/test_bench_lm.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from lean.errors import LeanError
from lean.lm import join_ids, onnx_perplexity


@dataclass
class PerplexityConfig:
    window: int = 256  # tokens per scored window (at most the model's context)
    stride: int = 128  # every token is scored once with at least window - stride tokens of context
    max_tokens: int | None = None  # None: the whole test split joined (the honest figure); else its first N tokens
    batch_size: int = 8  # windows per forward pass

    def __post_init__(self):
        if self.window < 2 or not 0 < self.stride <= self.window:
            raise LeanError(f"measure.perplexity needs window >= 2 and 0 < stride <= window, got {self.window}, {self.stride}")
        if (self.max_tokens is not None and self.max_tokens < 2) or self.batch_size < 1:
            raise LeanError("measure.perplexity max_tokens must be at least 2 and batch_size at least 1")


@dataclass
class GenerationConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    new_tokens: int = 32  # greedy tokens per prompt (fewer if every row of a batch reaches EOS)
    prompt_tokens: int = 64  # prompts are real test texts cut to this many tokens
    repeats: int = 3  # timed rounds per batch size, each on different prompts
    warmup: int = 1  # untimed rounds first (allocation, kernel selection, graph optimisation)

    def __post_init__(self):
        if isinstance(self.batch_sizes, int):
            self.batch_sizes = [self.batch_sizes]
        if not self.batch_sizes or not all(isinstance(b, int) and b >= 1 for b in self.batch_sizes):
            raise LeanError(f"measure.generation.batch_sizes must be positive integers, got {self.batch_sizes!r}")
        if self.new_tokens < 2 or self.prompt_tokens < 1 or self.repeats < 1 or self.warmup < 0:
            raise LeanError("measure.generation needs new_tokens >= 2, prompt_tokens >= 1, repeats >= 1, warmup >= 0")


def _config(cls, value: Any, where: str):
    if value is None or value is True:
        return cls()
    if not isinstance(value, dict):
        raise LeanError(f"{where} must be a mapping (or false to skip it), got {value!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in value if k not in known]
    if unknown:
        raise LeanError(f"unknown key '{unknown[0]}' in {where}; known keys: {', '.join(sorted(known))}")
    return cls(**value)


def check_measure_options(perplexity: Any, generation: Any) -> None:
    """Validate a suite's measure.perplexity / measure.generation (false skips generation)."""
    _config(PerplexityConfig, perplexity, "measure.perplexity")
    if generation is not False:
        _config(GenerationConfig, generation, "measure.generation")


def _is_onnx(backend) -> bool:
    return hasattr(getattr(backend, "model", None), "session")


def _token_ids(backend, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens, from the variant's own tokenizer."""
    if _is_onnx(backend):
        return [e.ids for e in backend.model.tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    return backend.tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _eos(backend) -> int | None:
    return backend.model.eos_id if _is_onnx(backend) else backend.tokenizer.eos_token_id


# ---- perplexity -------------------------------------------------------------------------------------------

def lm_quality(backend, task, test, spec: dict[str, Any]) -> dict[str, Any]:
    """QUALITY["lm"]: perplexity of the joined test split (sliding window), PyTorch or ONNX."""
    cfg = _config(PerplexityConfig, spec.get("perplexity"), "measure.perplexity")
    texts = list(test.texts)
    limit = backend.max_positions
    if limit and cfg.window > limit:
        raise LeanError(f"measure.perplexity.window {cfg.window} exceeds the model's context of {limit} tokens: lower it")
    if _is_onnx(backend):
        stream = join_ids(_token_ids(backend, texts), _eos(backend), cfg.max_tokens)
        out = onnx_perplexity(backend.model, stream, cfg.window, cfg.stride, cfg.batch_size)
    else:
        from lean.lm import perplexity

        out = perplexity(backend.model, backend.tokenizer, texts, window=cfg.window, stride=cfg.stride,
                         max_tokens=cfg.max_tokens, batch_size=cfg.batch_size)
    out.update({"max_tokens": cfg.max_tokens, "split": "test", "split_seed": task.split_seed, "texts": len(texts)})
    return out


# ---- generation -------------------------------------------------------------------------------------------

class _Clock:
    """A transformers streamer that only notes the time of each put: the prompt, then every new token."""

    def __init__(self, sync):
        self.sync, self.times = sync, []

    def put(self, value) -> None:
        self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _strip(row: list[int], eos: int | None) -> list[int]:
    return row[:row.index(eos)] if eos is not None and eos in row else row


def _torch_round(backend, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float, float, int]:
    """One greedy `generate` call: (new ids per prompt, ttft s, decode s, tokens decoded after the first)."""
    torch = backend._torch
    device = backend.input_device
    ids = torch.tensor(prompts, device=device)
    eos = backend.tokenizer.eos_token_id
    clock = _Clock(backend.sync)
    with torch.inference_mode():
        backend.sync()
        t0 = time.perf_counter()
        out = backend.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                     do_sample=False, num_beams=1, pad_token_id=eos, streamer=clock)
    steps = out.shape[1] - ids.shape[1]
    # clock.times: [prompt, token 1, ..., token steps]
    ttft, decode = clock.times[1] - t0, clock.times[-1] - clock.times[1]
    rows = [_strip(r, eos) for r in out[:, ids.shape[1]:].tolist()]
    return rows, ttft, decode, (steps - 1) * len(prompts)


def _onnx_round(backend, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float, float, int]:
    """One greedy KV-cache loop of lean.runtime (the same loop as OnnxModel.generate) on token ids."""
    import numpy as np

    ids = np.asarray(prompts, dtype=np.int64)
    stats: dict[str, Any] = {}
    rows = backend.model._greedy(ids, np.ones_like(ids), new_tokens, stats)
    return rows, stats["prefill_s"], stats["decode_s"], stats["new_tokens"]


def generation(backend, test, spec: dict[str, Any], save=None) -> dict[str, Any] | None:
    """Time to first token and decode tokens/s of greedy decoding at each batch size, with the greedy
    outputs of every prompt used (for comparison between variants)."""
    cfg = _config(GenerationConfig, spec.get("generation"), "measure.generation")
    from lean.bench.measure import phase, rss_peak_mb

    texts = list(test.texts)
    pool = [(i, ids[:cfg.prompt_tokens]) for i, ids in enumerate(_token_ids(backend, texts))
            if len(ids) >= cfg.prompt_tokens]
    need = max(cfg.batch_sizes)
    if len(pool) < need:
        raise LeanError(f"only {len(pool)} test texts have {cfg.prompt_tokens} tokens; batch {need} needs more: "
                        "lower measure.generation.prompt_tokens")
    limit = backend.max_positions
    if limit and cfg.prompt_tokens + cfg.new_tokens > limit:
        raise LeanError(f"prompt_tokens + new_tokens ({cfg.prompt_tokens + cfg.new_tokens}) exceeds the model's "
                        f"context of {limit} tokens")
    run_round = _onnx_round if _is_onnx(backend) else _torch_round
    cuda = str(backend.device).startswith("cuda") and not _is_onnx(backend)
    result: dict[str, Any] = {"runtime": "onnxruntime (KV cache)" if _is_onnx(backend) else "transformers generate",
                              "greedy": True, "new_tokens": cfg.new_tokens, "prompt_tokens": cfg.prompt_tokens,
                              "prompts_available": len(pool), "cells": []}
    for batch in cfg.batch_sizes:
        phase(f"generation batch {batch} x {cfg.new_tokens} new tokens")
        if cuda:
            backend._torch.cuda.reset_peak_memory_stats()
        ttfts, decode_s, decoded, steps, outputs = [], 0.0, 0, [], {}
        for r in range(cfg.warmup + cfg.repeats):
            chosen = [pool[(r * batch + k) % len(pool)] for k in range(batch)]
            rows, ttft, decode, n = run_round(backend, [ids for _, ids in chosen], cfg.new_tokens)
            for (index, _), row in zip(chosen, rows):
                outputs[index] = row
            if r >= cfg.warmup:
                ttfts.append(ttft)
                decode_s += decode
                decoded += n
                steps.append(1 + n // batch)
        ttfts.sort()
        cell = {"batch_size": batch, "rounds": cfg.repeats, "warmup": cfg.warmup,
                "ttft_ms": round(ttfts[len(ttfts) // 2] * 1e3, 3),
                "decode_tokens_per_s": round(decoded / decode_s, 2) if decode_s > 0 else None,
                "decoded_tokens": decoded, "steps_per_round": steps, "peak_rss_mb": rss_peak_mb(),
                "outputs": [[i, outputs[i]] for i in sorted(outputs)]}  # [test index, greedy new ids]
        if cuda:
            cell["cuda_peak_mb"] = round(backend._torch.cuda.max_memory_allocated() / 2**20, 1)
        result["cells"].append(cell)
        if save:
            save()
    return result


# ---- comparisons and report -------------------------------------------------------------------------------

def _cells(row: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {c["batch_size"]: c for c in (row.get("generation") or {}).get("cells", [])}


def greedy_match(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Prompts whose greedy new ids are identical in two cells (prompts both used)."""
    a, b = dict((i, r) for i, r in mine.get("outputs", [])), dict((i, r) for i, r in theirs.get("outputs", []))
    common = sorted(set(a) & set(b))
    same = sum(1 for i in common if a[i] == b[i])
    return {"identical": same, "prompts": len(common)}


def lm_ratios(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Against the baseline: perplexity ratio, decode speedup and TTFT ratio per batch, greedy agreement."""
    out: dict[str, Any] = {}
    p, bp = (row.get("quality") or {}).get("perplexity"), (base.get("quality") or {}).get("perplexity")
    out["perplexity_ratio"] = round(p / bp, 4) if p and bp else None
    mine, theirs = _cells(row), _cells(base)
    for batch, cell in mine.items():
        ref = theirs.get(batch)
        if not ref:
            continue
        if cell.get("decode_tokens_per_s") and ref.get("decode_tokens_per_s"):
            out[f"decode_speedup_b{batch}"] = round(cell["decode_tokens_per_s"] / ref["decode_tokens_per_s"], 4)
        if cell.get("ttft_ms") and ref.get("ttft_ms"):
            out[f"ttft_ratio_b{batch}"] = round(cell["ttft_ms"] / ref["ttft_ms"], 4)
        out[f"greedy_match_b{batch}"] = greedy_match(cell, ref)
    return out


def lm_markdown(results: dict[str, Any]) -> list[str]:
    """The language-model table of report.md: perplexity, generation per batch size, agreement."""
    batches: list[int] = []
    for row in results["variants"]:
        for b in _cells(row):
            if b not in batches:
                batches.append(b)
    header = ["variant", "perplexity (×)"] + [f"b{b} TTFT ms" for b in batches] + \
             [f"b{b} decode tok/s (×)" for b in batches] + [f"b{b} greedy = baseline" for b in batches]
    lines = ["", "## Language model", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["variants"]:
        quality, ratios, cells = row.get("quality") or {}, row.get("vs_baseline") or {}, _cells(row)
        ppl = quality.get("perplexity")
        values = [f"`{row['name']}`", "" if ppl is None else f"{ppl:.3f}" + (
            f" ({ratios['perplexity_ratio']:.3f}×)" if ratios.get("perplexity_ratio") else "")]
        values += [f"{cells[b]['ttft_ms']:.1f}" if b in cells else "" for b in batches]
        for b in batches:
            rate, speed = (cells.get(b) or {}).get("decode_tokens_per_s"), ratios.get(f"decode_speedup_b{b}")
            values.append("" if rate is None else f"{rate:.1f}" + (f" ({speed:.2f}×)" if speed else ""))
        for b in batches:
            match = ratios.get(f"greedy_match_b{b}")
            values.append(f"{match['identical']}/{match['prompts']}" if match else "")
        lines.append("| " + " | ".join(values) + " |")
    q = next((r.get("quality") for r in results["variants"] if r.get("quality")), None) or {}
    gen = next((r.get("generation") for r in results["variants"] if r.get("generation")), None) or {}
    lines += ["", f"- **perplexity**: sliding window {q.get('window')} tokens, stride {q.get('stride')}, over "
              f"{q.get('tokens')} scored tokens of the joined test split; (×) is the ratio to the baseline (lower is better).",
              f"- **generation**: greedy, {gen.get('new_tokens')} new tokens after prompts of {gen.get('prompt_tokens')} "
              "tokens cut from real test texts; TTFT is the median time to the first new token (prompt prefill "
              "included); decode tok/s counts the tokens after the first over the time after the first, summed over "
              "the timed rounds; (×) is the speedup over the baseline. *greedy = baseline* counts the prompts whose "
              "new tokens are identical to the baseline's."]
    return lines


def pareto_points(results: dict[str, Any]) -> tuple[list[tuple[str, float, float]], int | None]:
    """(name, decode tokens/s, perplexity) per measured variant at the smallest generation batch."""
    batches = sorted({b for row in results["variants"] for b in _cells(row)})
    batch = batches[0] if batches else None
    points = []
    for row in results["variants"]:
        cell = _cells(row).get(batch)
        ppl = (row.get("quality") or {}).get("perplexity")
        if row.get("status") == "ok" and cell and cell.get("decode_tokens_per_s") and ppl is not None:
            points.append((row["name"], cell["decode_tokens_per_s"], ppl))
    return points, batch


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Points no other point beats on both axes (higher tokens/s, lower perplexity), fastest first."""
    front, best = [], float("inf")
    for point in sorted(points, key=lambda p: (-p[1], p[2])):
        if point[2] < best:
            front.append(point)
            best = point[2]
    return front


def pareto_png(results: dict[str, Any]) -> bytes:
    """Perplexity against decode tokens/s (batch = the smallest measured), the front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, batch = pareto_points(results)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    if points:
        if max(p[1] for p in points) / max(min(p[1] for p in points), 1e-9) > 10:  # ONNX vs bitsandbytes on a CPU
            ax.set_xscale("log")
        from lean.bench.report import draw_points

        draw_points(ax, points, sorted(pareto_front(points), key=lambda p: p[1]), where="pre")
    else:
        ax.text(0.5, 0.5, "no variant measured yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"decode tokens/s, greedy, batch {batch} (higher is better)")
    ax.set_ylabel("test perplexity (lower is better)")
    from lean.bench.report import finish_png

    return finish_png(fig, ax, results, "perplexity against decode speed")
