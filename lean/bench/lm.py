"""The language-model scenario of `lean bench`: sliding-window perplexity and greedy generation speed,
for PyTorch and ONNX (KV-cache) variants alike, from the test split of an `lm` task.

    measure: {perplexity: {window: 256, stride: 128, max_tokens: 20000},
              generation: {batch_sizes: [1, 8], new_tokens: 32, prompt_tokens: 64, repeats: 3}}

The worker calls `lm_quality` (QUALITY["lm"]) and `generation`; the backends give token ids, EOS,
a greedy round and perplexity (lean.bench.backends); lean.bench.report_lm reads the figures back.
Child side of lean.bench; the suite checks its options with `check_measure_options`. Prompts are the first
`prompt_tokens` token ids of real test texts (texts shorter than that are skipped), fed as ids to
both runtimes, so PyTorch's and ONNX's greedy outputs can be compared token for token.
Tests: tests/test_bench_lm.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lean.bench.memory import rss_peak_mb
from lean.bench.protocol import phase_line
from lean.errors import LeanError
from lean.limits import MAX_BATCH_SIZE, MAX_SEQ_LENGTH, check_limit


@dataclass
class PerplexityConfig:
    window: int = 256  # tokens per scored window (at most the model's context)
    stride: int = 128  # every token is scored once with at least window - stride tokens of context
    max_tokens: int | None = None  # None: the whole test split joined (the honest figure); else its first N tokens
    batch_size: int = 8  # windows per forward pass

    def __post_init__(self):
        if self.window < 2 or not 0 < self.stride <= self.window:
            raise LeanError("measure.perplexity needs window >= 2 and 0 < stride <= window, "
                            f"got {self.window}, {self.stride}")
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
        check_limit("measure.generation.batch_sizes: batch size", max(self.batch_sizes), MAX_BATCH_SIZE,
                    "measure smaller batches")
        if self.new_tokens < 2 or self.prompt_tokens < 1 or self.repeats < 1 or self.warmup < 0:
            raise LeanError("measure.generation needs new_tokens >= 2, prompt_tokens >= 1, repeats >= 1, warmup >= 0")
        check_limit("measure.generation: new_tokens + prompt_tokens", self.new_tokens + self.prompt_tokens,
                    MAX_SEQ_LENGTH, "generate shorter texts")


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


# ---- perplexity -------------------------------------------------------------------------------------------

def lm_quality(backend, task, split, spec: dict[str, Any]) -> dict[str, Any]:
    """QUALITY["lm"]: perplexity of the joined split (sliding window), PyTorch or ONNX."""
    cfg = _config(PerplexityConfig, spec.get("perplexity"), "measure.perplexity")
    texts = list(split.texts)
    limit = backend.max_positions
    if limit and cfg.window > limit:
        raise LeanError(f"measure.perplexity.window {cfg.window} exceeds the model's context of {limit} tokens: "
                        "lower it")
    out = backend.perplexity(texts, cfg.window, cfg.stride, cfg.max_tokens, cfg.batch_size)
    out.update({"max_tokens": cfg.max_tokens, "split": spec.get("split", "test"), "split_seed": task.split_seed,
                "texts": len(texts)})
    return out


# ---- generation -------------------------------------------------------------------------------------------

def generation(backend, test, spec: dict[str, Any], save=None) -> dict[str, Any] | None:
    """Time to first token and decode tokens/s of greedy decoding at each batch size, with the greedy
    outputs of every prompt used (for comparison between variants)."""
    cfg = _config(GenerationConfig, spec.get("generation"), "measure.generation")

    texts = list(test.texts)
    pool = [(i, ids[:cfg.prompt_tokens]) for i, ids in enumerate(backend.token_ids(texts))
            if len(ids) >= cfg.prompt_tokens]
    need = max(cfg.batch_sizes)
    if len(pool) < need:
        raise LeanError(f"only {len(pool)} test texts have {cfg.prompt_tokens} tokens; batch {need} needs more: "
                        "lower measure.generation.prompt_tokens")
    limit = backend.max_positions
    if limit and cfg.prompt_tokens + cfg.new_tokens > limit:
        raise LeanError(f"prompt_tokens + new_tokens ({cfg.prompt_tokens + cfg.new_tokens}) exceeds the model's "
                        f"context of {limit} tokens")
    result: dict[str, Any] = {"runtime": backend.runtime,
                              "greedy": True, "new_tokens": cfg.new_tokens, "prompt_tokens": cfg.prompt_tokens,
                              "prompts_available": len(pool), "cells": []}
    for batch in cfg.batch_sizes:
        print(phase_line(f"generation batch {batch} x {cfg.new_tokens} new tokens"), flush=True)
        backend.reset_peak_memory()
        ttfts, decode_s, decoded, steps, outputs = [], 0.0, 0, [], {}
        for r in range(cfg.warmup + cfg.repeats):
            chosen = [pool[(r * batch + k) % len(pool)] for k in range(batch)]
            rows, ttft, decode, n = backend.greedy([ids for _, ids in chosen], cfg.new_tokens)
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
        if backend.device_peak_mb() is not None:
            cell["cuda_peak_mb"] = backend.device_peak_mb()
        result["cells"].append(cell)
        if save:
            save()
    return result


