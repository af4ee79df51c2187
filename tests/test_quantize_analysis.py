"""The analysis module: per-layer SQNR and output error, checked against figures computed by hand.

    python -m pytest tests/test_quantize_analysis.py -q
"""

from __future__ import annotations

import math

import pytest


def _distorted(layer, scale=1.0, shift=0.0):
    """A stand-in for a quantized twin: the layer's own output, scaled and shifted by known amounts."""
    import torch

    class Twin(torch.nn.Module):
        def forward(self, x):  # the layer's math, not the layer itself: its forward hook would call the twin again
            return torch.nn.functional.linear(x, layer.weight, layer.bias) * scale + shift

    return Twin()


def test_sqnr_db_by_hand():
    from lean.quantize import sqnr_db, tensor_sqnr_db

    assert sqnr_db(100.0, 1.0) == 20.0 and sqnr_db(1.0, 1.0) == 0.0 and sqnr_db(2.0, 1.0) == round(10 * math.log10(2), 3)
    assert sqnr_db(1.0, 0.0) == math.inf and sqnr_db(0.0, 1.0) == -math.inf
    import torch

    ref = torch.tensor([3.0, 4.0])  # energy 25
    assert tensor_sqnr_db(ref, torch.tensor([3.0, 3.0])) == round(10 * math.log10(25 / 1), 3)


@pytest.fixture(scope="module")
def bert_batches(tiny_bert_dir):
    from lean.models import load_model, load_tokenizer
    from lean.quantize import calibration_batches

    model = load_model(str(tiny_bert_dir)).eval()
    texts = ["Hello.", "Shares in the bank rose after profits beat forecasts on Monday morning.", "ok"]
    return model, calibration_batches(load_tokenizer(str(tiny_bert_dir)), texts, 64, "cpu", model, batch_size=3)


def test_a_scaled_twin_gives_exactly_20_db(bert_batches):
    """out * 0.9: noise = 0.01 * signal on every token, so SQNR = 10 log10(100) = 20 dB whatever the input."""
    from lean.quantize import layer_sqnr

    model, batches = bert_batches
    modules = dict(model.named_modules())
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"]
    per_layer, reference = layer_sqnr(model, {n: _distorted(modules[n], scale=0.9) for n in names}, batches)
    assert [r["name"] for r in per_layer] == names and [r["sqnr_db"] for r in per_layer] == [20.0, 20.0]
    assert per_layer[1]["shape"] == [32, 64] and per_layer[1]["type"] == "Linear"  # (out, in)
    assert reference[0].shape == (3, 5)


def test_padding_positions_are_left_out(bert_batches):
    """out + 0.5: noise = 0.25 per output value of every real token; padded tokens must not count."""
    import torch

    from lean.quantize import layer_sqnr

    model, batches = bert_batches
    name = "bert.encoder.layer.0.intermediate.dense"
    layer = dict(model.named_modules())[name]
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o.detach().float()))
    with torch.inference_mode():
        model(**batches[0]["inputs"])
    handle.remove()
    mask = batches[0]["inputs"]["attention_mask"].bool()
    assert not mask.all()  # the batch really has padding
    real = captured[0][mask]  # (real tokens, 64)
    expected = round(10 * math.log10(float(real.pow(2).sum()) / (real.numel() * 0.25)), 3)
    with_padding = round(10 * math.log10(float(captured[0].pow(2).sum()) / (captured[0].numel() * 0.25)), 3)
    assert expected != with_padding
    per_layer, _ = layer_sqnr(model, {name: _distorted(layer, shift=0.5)}, batches)
    assert per_layer[0]["sqnr_db"] == pytest.approx(expected, abs=2e-3)


def test_output_error_and_worst_layers(bert_batches):
    from lean.quantize import output_error, worst_layers

    model, batches = bert_batches
    import torch

    with torch.inference_mode():
        reference = [model(**b["inputs"]).logits.float() for b in batches]
    same = output_error(model, batches, reference)
    assert same == {"logits_sqnr_db": math.inf, "top1_agreement": 1.0, "positions": 3}
    flipped = output_error(model, batches, [-r for r in reference])  # ref - out = 2 ref: SQNR = 10 log10(1/4)
    assert flipped["logits_sqnr_db"] == round(10 * math.log10(0.25), 3)
    manifest = {"quantization": {"layers": [{"name": "a", "sqnr_db": 30.0}, {"name": "b", "sqnr_db": 12.5}, {"name": "c", "sqnr_db": 20.0}]}}
    assert [layer["name"] for layer in worst_layers(manifest, 2)] == ["b", "c"]
