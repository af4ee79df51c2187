"""Bytes a model holds: the whole model and its linear layers, quantization statistics included."""

from __future__ import annotations

from lean.quantize.handlers import dynamic_layer_tensors
from lean.quantize.selection import conv1d_type


def _module_bytes(module, seen: set) -> int:
    """Bytes a module holds itself (not its children's), quantization statistics included; tensors in
    `seen` (by address) are not counted again, so tied weights count once."""
    import torch.ao.nn.quantized.dynamic as nnqd

    tensors = [t for t in list(module._parameters.values()) + list(module._buffers.values()) if t is not None]
    weight = module._parameters.get("weight")
    state = getattr(weight, "quant_state", None)
    if state is not None:  # bnb 4-bit: block scales, the 16-entry code, and the nested (double-quant) state
        tensors += [state.absmax, state.code]
        if getattr(state, "state2", None) is not None:
            tensors += [state.state2.absmax, state.state2.code, state.offset]
    scb = getattr(weight, "SCB", None)
    if scb is not None:  # bnb int8: one scale per output row
        tensors.append(scb)
    total = 0
    for t in tensors:
        key = (t.data_ptr(), t.nbytes)
        if key not in seen:
            seen.add(key)
            total += t.nbytes
    if isinstance(module, nnqd.Linear):  # packed inside fbgemm: count int8 weight + scale/zero point + bias as saved
        total += sum(t.nbytes for t in dynamic_layer_tensors(module).values())
    return total


def weight_bytes(model) -> dict[str, int]:
    """Bytes of the whole model's tensors and of its linear layers alone (tied weights counted once;
    an lm_head tied to the embeddings counts as embedding, not as a linear layer)."""
    kinds = _linear_kinds()
    embedding_ptrs = {m.weight.data_ptr() for m in model.modules() if type(m).__name__ == "Embedding"}
    linear = 0
    for m in model.modules():
        weight = m._parameters.get("weight")
        if isinstance(m, kinds) and not (weight is not None and weight.data_ptr() in embedding_ptrs):
            linear += _module_bytes(m, set())
    seen: set = set()
    return {"model": sum(_module_bytes(m, seen) for m in model.modules()), "linear": linear}


def _linear_kinds() -> tuple:
    import torch.ao.nn.quantized.dynamic as nnqd
    import torch.nn as nn

    kinds = [nn.Linear, conv1d_type(), nnqd.Linear]
    try:
        from lean.quantize.bnb import import_bitsandbytes

        bnb = import_bitsandbytes()
        kinds += [bnb.nn.Linear8bitLt, bnb.nn.Linear4bit]
    except Exception:  # bitsandbytes missing or broken: no bnb layers can exist in the model either
        pass
    return tuple(kinds)
