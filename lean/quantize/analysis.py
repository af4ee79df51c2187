"""How much error quantization adds, measured on real text: per-layer SQNR and the whole model's output.

    per_layer, reference = layer_sqnr(model, twins, batches)   # before the twins are installed
    install_layers(...)
    output = output_error(model, batches, reference)           # after

SQNR (dB) = 10 log10(sum ref^2 / sum (ref - q)^2) over every real token's output vector: padding
positions are left out, so a batch's padding never flatters or hurts a figure.
"""

from __future__ import annotations

import math
from typing import Any

from lean.quantize.selection import linear_weight


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise), rounded to 0.001 dB; inf for no noise, -inf for no signal."""
    if noise <= 0:
        return float("inf")
    return round(10 * math.log10(signal / noise), 3) if signal > 0 else float("-inf")


def tensor_sqnr_db(reference, approximation) -> float:
    """SQNR of `approximation` against `reference` (any shapes that broadcast), in dB."""
    ref = reference.float()
    return sqnr_db(float(ref.pow(2).sum()), float((ref - approximation.float()).pow(2).sum()))


def calibration_batches(tokenizer, texts, max_length, device, model, batch_size: int = 8) -> list[dict]:
    """Tokenized calibration batches, keeping only the inputs the model's forward takes (Llama has no token_type_ids)."""
    from lean.metrics import forward_inputs

    batches = []
    for i in range(0, len(texts), batch_size):
        chunk = list(texts[i:i + batch_size])
        enc = tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        batches.append({"texts": chunk, "inputs": {k: v.to(device) for k, v in forward_inputs(model, enc).items()}})
    return batches


def calibration_texts(batches) -> list[str]:
    return [t for b in batches for t in b["texts"]]


def layer_sqnr(model, layers: dict[str, Any], batches) -> tuple[list[dict], list]:
    """Each quantized twin's output against its fp32 layer's on the same real inputs (padding excluded).

    Runs the fp32 model once; a hook feeds each layer's input to its twin in `layers` (name -> module).
    Returns one record per layer (name, type, shape (out, in), sqnr_db) and the fp32 logits per batch.
    """
    import torch

    modules = dict(model.named_modules())
    energy = {name: [0.0, 0.0] for name in layers}
    current_mask = {}

    def hook_for(name):
        def hook(module, inputs, output):
            q_out = layers[name](inputs[0]).float()
            ref = output.float()
            mask = current_mask.get("mask")
            if mask is not None and ref.dim() == 3 and ref.shape[:2] == mask.shape:  # (B, T, out) -> (tokens, out)
                ref, q_out = ref[mask], q_out[mask]
            energy[name][0] += float(ref.pow(2).sum())
            energy[name][1] += float((ref - q_out).pow(2).sum())
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in layers]
    reference = []
    try:
        with torch.inference_mode():
            for batch in batches:
                mask = batch["inputs"].get("attention_mask")
                current_mask["mask"] = mask.bool() if mask is not None else None
                reference.append(model(**batch["inputs"]).logits.float())
    finally:
        for h in handles:
            h.remove()
    per_layer = []
    for name, (signal, noise) in energy.items():
        layer = modules[name]
        weight, _ = linear_weight(layer)
        per_layer.append({"name": name, "type": type(layer).__name__, "shape": list(weight.shape), "sqnr_db": sqnr_db(signal, noise)})
    return per_layer, reference


def output_error(model, batches, reference) -> dict[str, Any]:
    """The whole model's logits against `reference` (fp32's) on the same batches: SQNR and top-1 agreement."""
    import torch

    signal = noise = 0.0
    agree = total = 0
    with torch.inference_mode():
        for batch, ref in zip(batches, reference):
            out = model(**batch["inputs"]).logits.float()
            mask = batch["inputs"].get("attention_mask")
            if out.dim() == 3 and mask is not None:  # LM logits (B, T, vocab): real tokens only
                out, ref = out[mask.bool()], ref[mask.bool()]
            signal += float(ref.pow(2).sum())
            noise += float((ref - out).pow(2).sum())
            agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
            total += out.shape[0]
    return {"logits_sqnr_db": sqnr_db(signal, noise), "top1_agreement": round(agree / max(total, 1), 6), "positions": total}


def worst_layers(manifest: dict[str, Any], n: int = 5) -> list[dict]:
    """The n quantized layers with the lowest SQNR (where accuracy goes), from a quantize manifest."""
    layers = manifest.get("quantization", {}).get("layers", [])
    return sorted(layers, key=lambda layer: layer["sqnr_db"])[:n]
