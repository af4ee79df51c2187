"""Causal language models: small configs to train from scratch, a tokenizer trained on the corpus,
block datasets for training, sliding-window perplexity, and generation timing.

No pretrained decoder ships offline, so `lean finetune --task bbc-news-lm --init-config llama-small`
trains one: a byte-level BPE tokenizer learnt from the train split (tokenizers library), then a
Llama or GPT-2 from one of INIT_CONFIGS. Online users pass any Hub or local causal LM instead.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

from lean.errors import LeanError

EOS = "<|endoftext|>"

# Small decoder shapes, named by family and size. Sizes exclude the embeddings (vocab_size x hidden).
INIT_CONFIGS: dict[str, dict[str, Any]] = {
    # ~1.6M non-embedding parameters: a few minutes per epoch of bbc-news-lm on 2 CPU cores
    "llama-tiny": {"family": "llama", "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
                   "num_attention_heads": 4, "num_key_value_heads": 2},
    # ~3.4M: the default CPU teacher (GQA: 4 query heads share 2 key/value heads, as in Llama 2/3)
    "llama-small": {"family": "llama", "hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 6,
                    "num_attention_heads": 4, "num_key_value_heads": 2},
    # ~25M: for a GPU
    "llama-base": {"family": "llama", "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
                   "num_attention_heads": 8, "num_key_value_heads": 4},
    "gpt2-small": {"family": "gpt2", "hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 4},
}


def train_tokenizer(texts: Sequence[str], vocab_size: int = 8192):
    """A byte-level BPE learnt from `texts` (any byte sequence encodes), wrapped for transformers.

    The end-of-text token doubles as bos, eos and pad, as in GPT-2.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise LeanError(f"--vocab-size must be at least 300 (256 bytes plus merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS,
                                   model_max_length=1_000_000)


def model_from_init_config(name: str, vocab_size: int, max_positions: int, tokenizer):
    """A randomly initialised causal LM of a named small shape."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if name not in INIT_CONFIGS:
        raise LeanError(f"unknown --init-config '{name}': choose one of {', '.join(INIT_CONFIGS)}")
    shape = dict(INIT_CONFIGS[name])
    family = shape.pop("family")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if family == "llama":
        config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=max_positions, tie_word_embeddings=True,
                             **shape, **ids)
        return LlamaForCausalLM(config)
    config = GPT2Config(vocab_size=vocab_size, n_positions=max_positions, n_embd=shape["hidden_size"],
                        n_layer=shape["num_hidden_layers"], n_head=shape["num_attention_heads"], **ids)
    return GPT2LMHeadModel(config)


class BlockDataset:
    """The corpus as one token stream (documents joined by eos) cut into blocks of `block_size` tokens."""

    def __init__(self, tokenizer, texts: Sequence[str], block_size: int):
        # documents joined by eos where the tokenizer has one, else end to end
        stream = join_ids(tokenizer(list(texts), add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)
        n = len(stream) // block_size
        if n == 0:
            raise LeanError(f"the corpus has {len(stream)} tokens, fewer than one block of {block_size}: lower --max-length")
        self.blocks = [stream[i * block_size:(i + 1) * block_size] for i in range(n)]
        self.tokens = n * block_size

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.blocks[i], "attention_mask": [1] * len(self.blocks[i]), "labels": self.blocks[i]}


def token_stream(tokenizer, texts: Sequence[str], max_tokens: int | None = None) -> list[int]:
    """The texts' token ids joined by eos (no other special tokens), cut to `max_tokens`."""
    return join_ids(tokenizer(list(texts), add_special_tokens=False)["input_ids"], tokenizer.eos_token_id, max_tokens)


def join_ids(ids_per_text: Sequence[Sequence[int]], eos: int | None, max_tokens: int | None = None) -> list[int]:
    """Token id lists joined into one stream, each followed by `eos`, cut to `max_tokens`."""
    stream: list[int] = []
    for ids in ids_per_text:
        stream.extend(list(ids) + ([eos] if eos is not None else []))
    stream = stream[:max_tokens] if max_tokens else stream
    if len(stream) < 2:
        raise LeanError("the corpus has fewer than 2 tokens: nothing to score")
    return stream


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) per window over a stream of n tokens: every position but the
    first is scored exactly once, with at least window - stride tokens of context after the first window."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
    return out


def onnx_perplexity(model, stream: list[int], window: int, stride: int, batch_size: int) -> dict[str, Any]:
    """`perplexity` for an ONNX causal LM (lean.runtime.OnnxModel): the same windows and right padding,
    scored with numpy."""
    import numpy as np

    pad = model.eos_id if model.eos_id is not None else model.pad_id
    nll_sum, n_scored = 0.0, 0
    spans = windows(len(stream), window, stride)
    for i in range(0, len(spans), batch_size):
        group = spans[i:i + batch_size]
        width = max(e - b for b, e, _ in group)
        ids = np.full((len(group), width), pad, dtype=np.int64)
        mask = np.zeros((len(group), width), dtype=np.int64)
        for row, (b, e, _) in enumerate(group):
            ids[row, :e - b], mask[row, :e - b] = stream[b:e], 1
        logits = model.run({"input_ids": ids, "attention_mask": mask}).astype(np.float64)  # (B, T, vocab)
        top = logits.max(-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]  # (B, T)
        for row, (b, e, first) in enumerate(group):
            # position p predicts token p + 1; score targets first..e-1 (stream positions)
            pos = np.arange(first - b - 1, e - b - 1)
            targets = ids[row, pos + 1]
            nll_sum += float((log_z[row, pos] - logits[row, pos, targets]).sum())
            n_scored += len(pos)
    mean = nll_sum / max(n_scored, 1)
    return {"perplexity": round(math.exp(mean), 4), "nll": round(mean, 6), "tokens": n_scored,
            "window": window, "stride": stride}


def perplexity(model, tokenizer, texts: Sequence[str], window: int = 256, stride: int = 128,
               max_tokens: int | None = None, batch_size: int = 16) -> dict[str, Any]:
    """Sliding-window perplexity of the joined corpus: every token is scored once, with at least
    window - stride tokens of context (except at the very start), as in the HF perplexity guide.
    Windows are independent, so they run in batches."""
    import torch

    if not 0 < stride <= window:
        raise LeanError(f"perplexity stride must be in 1..window ({window}), got {stride}")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit and window > limit:
        raise LeanError(f"perplexity window {window} exceeds the model's context of {limit} tokens: lower it")
    # padding is masked and never scored, so any id does; tokenizers without EOS (or pad) get 0
    fill = next((t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None), 0)
    stream = token_stream(tokenizer, texts, max_tokens)
    spans = windows(len(stream), window, stride)
    device = next(model.parameters()).device
    nll_sum, n_scored = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(spans), batch_size):
            group = spans[i:i + batch_size]
            width = max(e - b for b, e, _ in group)
            ids = torch.full((len(group), width), fill, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            labels = torch.full((len(group), width), -100, dtype=torch.long)
            for row, (b, e, first) in enumerate(group):
                ids[row, : e - b] = torch.tensor(stream[b:e])
                mask[row, : e - b] = 1
                labels[row, first - b: e - b] = ids[row, first - b: e - b]
            # right padding with a mask: causal attention never lets a real token see the padding
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                     labels[:, 1:].reshape(-1).to(device), ignore_index=-100,
                                                     reduction="sum")
            nll_sum += float(loss)
            n_scored += int((labels[:, 1:] != -100).sum())
    mean = nll_sum / max(n_scored, 1)
    return {"perplexity": round(math.exp(mean), 4), "nll": round(mean, 6), "tokens": n_scored,
            "window": window, "stride": stride}


def generation_speed(model, tokenizer, prompts: Sequence[str], batch_size: int = 1, new_tokens: int = 32,
                     prompt_tokens: int = 64, repeats: int = 3) -> dict[str, Any]:
    """Time to first token and decode tokens/s of greedy `generate`, on real prompts cut to
    `prompt_tokens` tokens. Decode rate = (new_tokens - 1) * batch / (total time - first-token time)."""
    import torch

    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    enc = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    enc = [ids[:prompt_tokens] for ids in enc if len(ids) >= prompt_tokens]
    if len(enc) < batch_size:
        raise LeanError(f"only {len(enc)} prompts have {prompt_tokens} tokens; batch {batch_size} needs more")
    ttft, totals = [], []
    with torch.inference_mode():
        for r in range(repeats + 1):  # the first round warms up and is not counted
            batch = torch.tensor(enc[(r * batch_size) % (len(enc) - batch_size + 1):][:batch_size], device=device)
            mask = torch.ones_like(batch)
            sync(); t0 = time.perf_counter()
            model.generate(batch, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            sync(); t1 = time.perf_counter()
            model.generate(batch, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id)
            sync(); t2 = time.perf_counter()
            if r:
                ttft.append(t1 - t0)
                totals.append(t2 - t1)
    ttft_s = sorted(ttft)[len(ttft) // 2]
    total_s = sorted(totals)[len(totals) // 2]
    decode_s = max(total_s - ttft_s, 1e-9)
    return {"batch_size": batch_size, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
            "ttft_ms": round(ttft_s * 1e3, 3), "total_ms": round(total_s * 1e3, 3),
            "decode_tokens_per_s": round((new_tokens - 1) * batch_size / decode_s, 2)}
