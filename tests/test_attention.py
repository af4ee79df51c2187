"""lean.attention: tiny random transformers models give the same outputs through the lean kernel as
through sdpa: BERT-family models by module swap, Llama and GPT-2 through the attention interface,
padded batches, cached decoding, gradients, and logged fallbacks. Without CUDA the kernel runs in
Triton's interpreter.
"""

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Must precede the first import of the kernels (see tests/test_flash_attention.py).
    os.environ["TRITON_INTERPRET"] = "1"

import lean.attention as lean_attention  # noqa: E402
import lean.kernels  # noqa: E402

transformers = pytest.importorskip("transformers")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_fallback_log():
    lean_attention._logged_reasons.clear()  # each test sees its own first (warning) log line
    yield


@pytest.fixture
def kernel_calls(monkeypatch):
    """Records each call to the kernel (its keyword arguments) so a test can prove it ran."""
    calls = []
    real = lean.kernels.flash_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(lean.kernels, "flash_attention", spy)
    return calls


def fallback_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "lean.attention" and "falls back" in r.getMessage()]


def relative_error(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def padded_batch(seq_len=13, left=False):
    torch.manual_seed(0)
    ids = torch.randint(1, 100, (2, seq_len), device=DEVICE)
    mask = torch.ones(2, seq_len, dtype=torch.long, device=DEVICE)
    if left:
        mask[1, :4] = 0
    else:
        mask[1, seq_len - 5:] = 0
    return ids, mask


def encoder(kind, attn_implementation, **overrides):
    torch.manual_seed(0)
    if kind == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=100, dim=64, n_heads=2, n_layers=2, hidden_dim=128,
                                               max_position_embeddings=64, **overrides)
        cls = transformers.DistilBertModel
    else:
        config_cls = transformers.BertConfig if kind == "bert" else transformers.RobertaConfig
        config = config_cls(vocab_size=100, hidden_size=64, num_attention_heads=2, num_hidden_layers=2,
                            intermediate_size=128, max_position_embeddings=64, **overrides)
        cls = transformers.BertModel if kind == "bert" else transformers.RobertaModel
    return cls._from_config(config, attn_implementation=attn_implementation).to(DEVICE).eval()


def assert_lean_route(model):
    """transformers 5 routes BERT-family attention through the interface (no module is swapped);
    4.57 does not, and lean swaps one self-attention module per layer."""
    swapped = [m for m in model.modules() if type(m).__name__.startswith("Lean")]
    if lean_attention.uses_attention_interface(model):
        assert model.config._attn_implementation == "lean" and swapped == []
    else:
        assert len(swapped) == 2


@pytest.mark.parametrize("kind, base", [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa"),
                                        ("distilbert", "sdpa"), ("distilbert", "eager")])
def test_encoder_through_lean_matches_sdpa(kind, base, kernel_calls, caplog):
    caplog.set_level(logging.DEBUG, logger="lean.attention")
    reference = encoder(kind, "sdpa")
    model = encoder(kind, base)
    model.load_state_dict(reference.state_dict())
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        lean_attention.use_lean_attention(model)
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state

    assert_lean_route(model)
    assert len(kernel_calls) == 2 and all(c["key_padding_mask"] is not None for c in kernel_calls)
    assert fallback_messages(caplog) == []
    assert relative_error(got, expected) < 1e-5
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU for half-precision models through the kernel")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_encoder_half_precision_matches_sdpa(dtype, tolerance, kernel_calls, caplog):
    reference = encoder("bert", "sdpa").to(dtype)
    model = copy.deepcopy(reference)
    ids, mask = padded_batch(seq_len=60)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        got = lean_attention.use_lean_attention(model)(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_lean_route(model)
    assert len(kernel_calls) == 2 and fallback_messages(caplog) == []
    real = mask.bool()
    assert got.dtype == dtype
    assert relative_error(got[real], expected[real]) < tolerance


def test_encoder_without_padding_passes_no_mask(kernel_calls):
    model = lean_attention.use_lean_attention(encoder("bert", "sdpa"))
    ids, _ = padded_batch()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert len(kernel_calls) == 2 and all(c["key_padding_mask"] is None for c in kernel_calls)


def test_encoder_falls_back_without_cuda_or_interpreter(monkeypatch, kernel_calls, caplog):
    reference = encoder("bert", "sdpa")
    model = lean_attention.use_lean_attention(copy.deepcopy(reference))
    ids, mask = padded_batch()
    if DEVICE == "cuda":
        pytest.skip("with CUDA the kernel always runs")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert kernel_calls == []
    assert any("CUDA" in m for m in fallback_messages(caplog))
    assert torch.equal(got, expected)  # the model's own path, unchanged


def test_encoder_dropout_in_training_falls_back(kernel_calls, caplog):
    reference = encoder("bert", "sdpa", attention_probs_dropout_prob=0.1).train()
    model = lean_attention.use_lean_attention(copy.deepcopy(reference))
    ids, mask = padded_batch()
    torch.manual_seed(3)
    expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(3)
    got = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert kernel_calls == []
    assert any("dropout" in m for m in fallback_messages(caplog))
    assert torch.equal(got, expected)


def test_model_without_known_attention_is_refused():
    with pytest.raises(ValueError, match="cannot run"):
        lean_attention.use_lean_attention(torch.nn.Sequential(torch.nn.Linear(4, 4)))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def load_llama(path, attn_implementation):
    lean_attention.register()
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=attn_implementation, torch_dtype=torch.float32).to(DEVICE).eval()


def test_llama_from_pretrained_lean_matches_sdpa_on_left_padded_batch(llama_dir, kernel_calls, caplog):
    reference, model = load_llama(llama_dir, "sdpa"), load_llama(llama_dir, "lean")
    assert model.config._attn_implementation == "lean"
    ids, mask = padded_batch(left=True)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    assert len(kernel_calls) == 2
    assert all(c["causal"] and c["key_padding_mask"] is not None for c in kernel_calls)
    assert fallback_messages(caplog) == []
    real = mask.bool()
    assert relative_error(got[real], expected[real]) < 1e-5


def test_llama_cached_decoding_matches_sdpa(llama_dir, kernel_calls, caplog):
    # Prefill 7 tokens, then a chunk of 4 (q_len 4 against 11 keys), then one token.
    reference, model = load_llama(llama_dir, "sdpa"), load_llama(llama_dir, "lean")
    ids, mask = padded_batch(seq_len=12, left=True)
    steps = [(0, 7), (7, 11), (11, 12)]
    with torch.no_grad():
        caches = {"ref": None, "lean": None}
        for start, end in steps:
            outs = {}
            for name, m in (("ref", reference), ("lean", model)):
                out = m(input_ids=ids[:, start:end], attention_mask=mask[:, :end],
                        past_key_values=caches[name], use_cache=True)
                caches[name] = out.past_key_values
                outs[name] = out.logits
            real = mask[:, start:end].bool()
            assert relative_error(outs["lean"][real], outs["ref"][real]) < 1e-5, (start, end)
    assert len(kernel_calls) == 2 * len(steps)
    assert fallback_messages(caplog) == []


def test_llama_gradients_match_sdpa(llama_dir, kernel_calls, caplog):
    # No mask and no cache: transformers adds a packed-sequence check to the causal mask, which
    # lean_mask recognises as plain causal.
    reference, model = load_llama(llama_dir, "sdpa").train(), load_llama(llama_dir, "lean").train()
    ids, _ = padded_batch(seq_len=11)
    for m in (reference, model):
        m(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    assert len(kernel_calls) == 2 and all(c["key_padding_mask"] is None for c in kernel_calls)
    assert fallback_messages(caplog) == []
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                 "model.layers.0.self_attn.v_proj.weight", "model.embed_tokens.weight"):
        got = model.get_parameter(name).grad
        expected = reference.get_parameter(name).grad
        assert relative_error(got, expected) < 1e-4, name


def test_llama_output_attentions_falls_back_to_eager(llama_dir, kernel_calls, caplog):
    reference, model = load_llama(llama_dir, "eager"), load_llama(llama_dir, "lean")
    ids, mask = padded_batch(left=True)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, output_attentions=True)
        got = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert kernel_calls == []
    assert any("output_attentions" in m for m in fallback_messages(caplog))
    real = mask.bool()
    assert relative_error(got.logits[real], expected.logits[real]) < 1e-5
    assert got.attentions is not None and relative_error(got.attentions[0][0], expected.attentions[0][0]) < 1e-5


def test_gpt2_use_lean_attention_matches_sdpa(kernel_calls, caplog):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=2, n_positions=64)
    reference = transformers.GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").to(DEVICE).eval()
    model = lean_attention.use_lean_attention(copy.deepcopy(reference))
    assert model.config._attn_implementation == "lean"
    ids, mask = padded_batch()
    with torch.no_grad():
        for attention_mask in (mask, None):
            kernel_calls.clear()
            expected = reference(input_ids=ids, attention_mask=attention_mask).logits
            got = model(input_ids=ids, attention_mask=attention_mask).logits
            real = mask.bool() if attention_mask is not None else torch.ones_like(mask, dtype=torch.bool)
            assert relative_error(got[real], expected[real]) < 1e-5
            assert len(kernel_calls) == 2 and all(c["causal"] for c in kernel_calls)
    assert fallback_messages(caplog) == []


def test_key_padding_from_mask_rejects_non_padding_masks():
    b, s = 2, 5
    causal = torch.tril(torch.ones(s, s, dtype=torch.bool))[None, None].expand(b, 1, s, s)
    assert lean_attention.key_padding_from_mask(causal, b, s, s) is None
    bias = torch.zeros(b, 1, 1, s)
    bias[..., 0] = -2.0  # a real additive bias, not a mask
    assert lean_attention.key_padding_from_mask(bias, b, s, s) is None
    additive = torch.zeros(b, 1, s, s)
    additive[1, ..., 3:] = torch.finfo(torch.float32).min
    kpm = lean_attention.key_padding_from_mask(additive, b, s, s)
    assert kpm.tolist() == [[True] * 5, [True, True, True, False, False]]


def test_lean_installed_leaves_bare_kernels_unresolved_and_models_load(tmp_path):
    # From a directory outside the checkout (the repo root on sys.path would shadow the test).
    script = """
import importlib.util, json, sys
import lean.attention, lean.kernels
from transformers import BertConfig, BertModel
from transformers.utils import is_kernels_available
spec = importlib.util.find_spec("kernels")
config = BertConfig(vocab_size=100, hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64)
BertModel(config).save_pretrained(sys.argv[1])
model = BertModel.from_pretrained(sys.argv[1])
print(json.dumps({"kernels_origin": spec.origin if spec else None, "lean_kernels": lean.kernels.__file__,
                  "hf_kernels_available": bool(is_kernels_available()), "loaded": type(model).__name__}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bert")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == "BertModel"
    assert Path(report["lean_kernels"]).resolve().parent == (REPO / "kernels").resolve()
    origin = report["kernels_origin"]
    assert origin is None or not Path(origin).resolve().is_relative_to((REPO / "kernels").resolve())
    if origin is None:
        assert report["hf_kernels_available"] is False
