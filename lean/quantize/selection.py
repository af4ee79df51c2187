"""Which layers a method touches: every nn.Linear and GPT-2 Conv1D, less the skipped ones.

A layer is quantized when it is a linear layer, is not kept in full precision (`skip`, or by
default the task head; a weight tied to the input embeddings; the architecture's fp32 modules),
and `filter_fn(module, name)` returns True when one is given (torchao's filter function; it is
asked about the linear layers not already kept, never about other modules).
"""

from __future__ import annotations

from typing import Any, Callable

from lean.errors import LeanError

HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs")  # task heads kept in full precision by default

FilterFn = Callable[[Any, str], bool]


def conv1d_type():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def linear_layers(model) -> dict[str, Any]:
    """Every nn.Linear and GPT-2-style Conv1D (weight (in, out)) by full name, in model order."""
    import torch.nn as nn

    kinds = (nn.Linear, conv1d_type())
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def matches(name: str, key: str) -> bool:
    """transformers' bitsandbytes rule, so a saved model reloads with the same layers quantized."""
    return key == name or f"{key}." in name or name.rsplit(".", 1)[-1] == key


def default_skip(model) -> list[str]:
    """The task head (classifier / score / lm_head / the output embeddings)."""
    names = [n for n, _ in model.named_children() if n in HEAD_NAMES]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None:
        names += [n for n, m in model.named_modules() if m is output and n not in names]
    return names


def plan_layers(model, config, filter_fn: FilterFn | None = None) -> tuple[list[str], list[str]]:
    """(names to quantize, names kept in full precision) among the model's linear layers."""
    if filter_fn is not None and not callable(filter_fn):
        raise LeanError(f"filter_fn must be a function (module, name) -> bool, got {type(filter_fn).__name__}")
    layers = linear_layers(model)
    keys = default_skip(model) if config.skip is None else list(config.skip)
    if config.skip is not None:
        unmatched = [k for k in config.skip if not any(matches(n, k) for n in layers)]
        if unmatched:
            some = ", ".join(list(layers)[:6]) + (", ..." if len(layers) > 6 else "")
            raise LeanError(f"--skip {', '.join(unmatched)} names no linear layer of this model; its linear layers are: {some}")
    keys += list(getattr(model, "_keep_in_fp32_modules", None) or []) + list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    tied = _tied_to_embedding(model, layers)
    quantized, skipped = [], []
    for name, module in layers.items():
        keep = name in tied or any(matches(name, k) for k in keys) or (filter_fn is not None and not filter_fn(module, name))
        (skipped if keep else quantized).append(name)
    # A saved bitsandbytes model reloads with transformers keeping every layer whose name contains a kept
    # layer's name (4.57 matches substrings, 5.x suffixes): DistilBERT's pre_classifier beside its
    # classifier. Keeping them here too makes the reloaded model the one that was measured.
    shadowed = [n for n in quantized if any(k in n for k in skipped)]
    return [n for n in quantized if n not in shadowed], skipped + shadowed


def _tied_to_embedding(model, layers) -> set[str]:
    """Linear layers that share their weight with an input embedding (GPT-2's lm_head): never quantized."""
    import torch.nn as nn

    embedding_ptrs = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    return {n for n, m in layers.items() if m.weight.data_ptr() in embedding_ptrs}


def linear_weight(layer):
    """(weight (out, in), bias or None) of an nn.Linear or a Conv1D (whose weight is stored (in, out))."""
    weight = layer.weight.detach()
    if isinstance(layer, conv1d_type()):
        weight = weight.t()
    return weight.contiguous(), (None if layer.bias is None else layer.bias.detach())
