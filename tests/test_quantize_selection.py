"""Layer selection: skip, the default task head, and torchao's filter_fn(module, name).

    python -m pytest tests/test_quantize_selection.py -q
"""

from __future__ import annotations

import pytest


def _attention_only(module, name):
    return ".attention." in name


def test_filter_fn_picks_layers_beside_the_default_head_skip(tiny_bert_dir):
    import lean.quantize as Q
    from lean.models import load_model

    model = load_model(str(tiny_bert_dir)).eval()
    every = list(Q.linear_layers(model))
    seen = []
    quantized, skipped = Q.plan_layers(model, Q.BnbNF4Config(), lambda m, n: seen.append((type(m).__name__, n)) or _attention_only(m, n))
    assert quantized == [n for n in every if ".attention." in n] and len(quantized) == 4 * 4  # q, k, v, out per layer
    assert sorted(quantized + skipped) == sorted(every) and "classifier" in skipped
    # asked about linear layers only, and not about those already kept (the head)
    assert {t for t, _ in seen} == {"Linear"} and {n for _, n in seen} == set(every) - {"classifier"}
    # an explicit skip still wins over filter_fn
    quantized, _ = Q.plan_layers(model, Q.BnbNF4Config(skip=["query"]), _attention_only)
    assert len(quantized) == 3 * 4 and not any(n.endswith(".query") for n in quantized)


def test_filter_fn_through_quantize_and_a_reload(tiny_bert_dir, tmp_path):
    """The layers filter_fn left out are recorded as skipped, so transformers' loader rebuilds the same model."""
    import torch

    import lean.quantize as Q
    from lean.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_bert_dir))
    enc = tokenizer(["Shares fell on Monday.", "The band's album went to number one."], padding=True, return_tensors="pt")
    model = Q.quantize_(load_model(str(tiny_bert_dir)).eval(), Q.BnbInt8Config(), filter_fn=_attention_only)
    layer = model.bert.encoder.layer[0]
    assert type(layer.attention.self.query).__name__ == "Linear8bitLt"
    assert type(layer.intermediate.dense).__name__ == "Linear"
    with torch.inference_mode():
        expected = model(**enc).logits
    Q.save_quantized(model, tmp_path / "q")
    reloaded = Q.load_quantized(tmp_path / "q")
    assert type(reloaded.bert.encoder.layer[0].intermediate.dense).__name__ == "Linear"
    assert reloaded.lean_quantization["quantized"] == model.lean_quantization["quantized"]
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(**enc).logits, expected, rtol=0, atol=1e-6)


def test_bad_filter_fns_are_refused(tiny_bert_dir):
    import lean.quantize as Q
    from lean.errors import LeanError
    from lean.models import load_model

    model = load_model(str(tiny_bert_dir)).eval()
    with pytest.raises(LeanError, match="filter_fn must be a function"):
        Q.quantize_(model, Q.DynamicInt8Config(), filter_fn="attention")
    with pytest.raises(LeanError, match="no linear layer is left to quantize"):
        Q.quantize_(model, Q.DynamicInt8Config(), filter_fn=lambda m, n: False)
    assert type(model.bert.encoder.layer[0].attention.self.query).__name__ == "Linear"  # refused before any change
