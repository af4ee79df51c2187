"""Token-by-token generation for an exported causal LM, for streaming over server-sent events.

Built on lean.runtime's public API (the session, encode, the tokenizer): one prompt at a time, the KV
cache reused at each step, greedy when temperature is 0 (the same tokens as `lean predict`), else
sampled with temperature, top-k and top-p from a seeded generator so a seed replays a run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


def stream_ids(model, prompt: str, max_new_tokens: int, sampling: Sampling, max_length: int | None = None,
               stop: threading.Event | None = None) -> Iterator[int]:
    """New token ids one at a time, ending at EOS, max_new_tokens, or when `stop` is set.

    A prompt longer than the context less max_new_tokens keeps its last tokens, as `lean predict` does.
    """
    room = model.context_length - max_new_tokens
    room = min(max_length or room, room)
    feed = model.encode([prompt], max_length=room, padding_side="left", truncation_side="left")
    tokens, mask = feed["input_ids"], feed["attention_mask"]
    past = _empty_past(model)
    rng = np.random.default_rng(sampling.seed)
    for _ in range(max_new_tokens):
        if stop is not None and stop.is_set():
            return
        outputs = model.session.run(None, {**model.lm_inputs(tokens, mask), **past})
        logits = outputs[model.output_names.index("logits")][0, -1, :].astype(np.float64)  # (vocab,)
        next_id = _choose(logits, sampling, rng)
        if model.eos_id is not None and next_id == model.eos_id:
            return
        yield next_id
        # present.N.key -> past_key_values.N.key: (1, kv_heads, past + T, head_dim)
        past = {name.replace("present", "past_key_values"): value
                for name, value in zip(model.output_names, outputs) if name.startswith("present")}
        tokens = np.array([[next_id]], dtype=np.int64)
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)


def _choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = np.sort(logits)[-min(sampling.top_k, logits.size)]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if sampling.top_p is not None and sampling.top_p < 1:
        order = np.argsort(-probs)
        keep = np.cumsum(probs[order]) - probs[order] < sampling.top_p  # the smallest set reaching top_p
        cut = np.zeros_like(probs)
        cut[order[keep]] = probs[order[keep]]
        probs = cut / cut.sum()
    return int(rng.choice(probs.size, p=probs))



def _empty_past(model) -> dict[str, np.ndarray]:
    """Zero-length KV cache for the first step: (1, kv_heads, 0, head_dim) per layer, key and value."""
    past = {}
    for i in model.session.get_inputs():
        if i.name.startswith("past_key_values"):
            dtype = np.float16 if "float16" in i.type else np.float32
            past[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), dtype=dtype)
    return past


class TextStream:
    """Turns ids into text pieces: decodes the whole sequence each time and yields what is new,
    so a character split over several byte-level tokens comes out whole."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.text = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            return ""
        piece, self.text = text[len(self.text):], text
        return piece
