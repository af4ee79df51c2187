"""lean.kernels.flash_attention against the float64 reference: forward and backward, causal and
not, grouped-query attention, key padding, ragged lengths, q_len != k_len.

Without CUDA the kernels run in Triton's CPU interpreter on tiny shapes; with CUDA the same
cases run compiled, plus the full-size cases.
"""

import importlib
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # triton.jit picks interpreted or compiled code when the kernel module is imported, so the flag
    # goes in before that import (lean.kernels also rebuilds its kernels if the flag changes later).
    os.environ["TRITON_INTERPRET"] = "1"

from lean.kernels import attention_reference, flash_attention  # noqa: E402

# The module, not the function of the same name that lean.kernels re-exports.
fa_module = importlib.import_module("lean.kernels.flash_attention")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for full-size shapes")


def relative_error(actual, expected):
    """||actual - expected|| / ||expected|| (Frobenius), in float64. Where the reference is exactly
    zero (dq with a single key: softmax over one key is constant) it is the RMS of actual."""
    diff = (actual.double() - expected).norm()
    scale = expected.norm()
    if scale == 0:
        return (diff / expected.numel() ** 0.5).item()
    return (diff / scale).item()


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Every buffer the kernels write starts as NaN, so an element left unwritten fails the test."""

    def empty_like(t):
        return torch.full_like(t, float("nan"), memory_format=torch.contiguous_format)

    def empty_rows(b, h, s, device):
        return torch.full((b, h, s), float("nan"), device=device, dtype=torch.float32)

    monkeypatch.setattr(fa_module, "_empty_like", empty_like)
    monkeypatch.setattr(fa_module, "_empty_rows", empty_rows)


def padding_mask(batch, k_len, device):
    """(B, Sk) bool, True = attend. Row 0 keeps ~half its keys, row 1 (if any) keeps one key less."""
    mask = torch.ones(batch, k_len, dtype=torch.bool, device=device)
    mask[0, max(1, k_len // 2):] = False
    if batch > 1:
        mask[1, k_len - 1:] = False if k_len > 1 else True
    return mask


def check_against_reference(dtype, batch, heads, kv_heads, q_len, k_len, head_dim, causal, padded, device):
    torch.manual_seed(0)
    q = torch.randn(batch, heads, q_len, head_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, kv_heads, k_len, head_dim, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, kv_heads, k_len, head_dim, device=device, dtype=dtype, requires_grad=True)
    kpm = padding_mask(batch, k_len, device) if padded else None

    out = flash_attention(q, k, v, causal=causal, key_padding_mask=kpm)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_reference(q64, k64, v64, causal=causal, key_padding_mask=kpm)
    ref.backward(grad_out.double())

    assert out.shape == ref.shape and out.dtype == dtype
    tol = TOLERANCE[dtype]
    for name, got, want in (("out", out, ref), ("dq", q.grad, q64.grad), ("dk", k.grad, k64.grad),
                            ("dv", v.grad, v64.grad)):
        assert torch.isfinite(got).all(), f"{name} has NaN/inf (unwritten or invalid elements)"
        err = relative_error(got, want)
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


# (dtype, batch, q_heads, kv_heads, q_len, k_len, head_dim, causal, padded)
SMALL_CASES = [
    (torch.float32, 1, 2, 2, 1, 1, 32, False, False),  # single token
    (torch.float32, 2, 2, 2, 17, 17, 32, True, False),  # odd length, causal
    (torch.float32, 2, 4, 2, 33, 33, 64, False, True),  # GQA + padded batch (BERT-style)
    (torch.float32, 1, 4, 1, 33, 70, 32, True, True),  # cached decoding chunk, MQA, padding
    (torch.float32, 2, 2, 2, 40, 17, 32, True, False),  # Sq > Sk: early rows see no key -> 0
    (torch.float32, 1, 2, 2, 1, 45, 64, True, False),  # one decode step against a cache
    (torch.float32, 1, 1, 1, 17, 17, 128, True, False),  # head_dim 128
    (torch.float32, 1, 2, 1, 20, 20, 48, False, False),  # head_dim 48, zero-padded to 64
    (torch.bfloat16, 2, 4, 2, 33, 33, 32, True, True),
    (torch.bfloat16, 1, 2, 2, 17, 50, 64, False, False),
    (torch.bfloat16, 1, 2, 1, 1, 33, 32, True, True),
    (torch.float16, 2, 2, 2, 33, 33, 64, True, False),
    (torch.float16, 1, 4, 2, 17, 40, 32, False, True),
]


def case_id(case):
    dtype, b, h, hkv, sq, sk, d, causal, padded = case
    name = str(dtype).replace("torch.", "")
    return f"{name}-b{b}h{h}kv{hkv}-q{sq}k{sk}-d{d}" + ("-causal" if causal else "") + ("-pad" if padded else "")


@pytest.mark.parametrize("case", SMALL_CASES, ids=case_id)
def test_matches_reference(case, poisoned_outputs):
    check_against_reference(*case, device=DEVICE)


# Full-size versions of the same situations; too slow for the interpreter.
LARGE_CASES = [
    (dtype, 2, 16, hkv, sq, sk, d, causal, padded)
    for dtype in (torch.bfloat16, torch.float16, torch.float32)
    for (hkv, sq, sk, d, causal, padded) in (
        (16, 1024, 1024, 64, False, False),
        (16, 1000, 1000, 128, True, False),
        (4, 2048, 2048, 128, True, True),
        (2, 257, 1537, 64, True, True),
        (16, 1, 4096, 128, True, False),
        (16, 1031, 999, 32, False, True),
    )
]


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("case", LARGE_CASES, ids=case_id)
def test_matches_reference_full_size(case, poisoned_outputs):
    check_against_reference(*case, device="cuda")


def test_fully_padded_sequence_gives_zeros_and_zero_grads(poisoned_outputs):
    torch.manual_seed(1)
    q = torch.randn(2, 2, 9, 32, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 2, 9, 32, device=DEVICE, requires_grad=True)
    v = torch.randn(2, 2, 9, 32, device=DEVICE, requires_grad=True)
    kpm = torch.ones(2, 9, dtype=torch.bool, device=DEVICE)
    kpm[1] = False  # the second sequence is all padding
    out = flash_attention(q, k, v, key_padding_mask=kpm)
    out.sum().backward()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(q.grad[1], torch.zeros_like(q.grad[1]))
    assert torch.equal(k.grad[1], torch.zeros_like(k.grad[1]))
    ref = attention_reference(q.detach().double(), k.detach().double(), v.detach().double(), key_padding_mask=kpm)
    assert relative_error(out[0], ref[0]) < 1e-5


def test_integer_mask_custom_scale_and_strided_inputs(poisoned_outputs):
    # q/k/v as transformers produces them: (B, S, H, D) projections viewed as (B, H, S, D).
    torch.manual_seed(2)
    qkv = torch.randn(2, 21, 3, 2, 32, device=DEVICE)  # (B, S, 3, H, D)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, S, D), non-contiguous
    kpm = torch.ones(2, 21, dtype=torch.int64, device=DEVICE)
    kpm[0, 15:] = 0
    out = flash_attention(q, k, v, causal=True, key_padding_mask=kpm, sm_scale=0.3)
    ref = attention_reference(q.double(), k.double(), v.double(), causal=True, key_padding_mask=kpm, sm_scale=0.3)
    assert relative_error(out, ref) < 1e-5


def test_rebuilds_kernels_when_interpreter_flag_changes(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the interpreter is only used without CUDA")
    stale = fa_module._kernels()
    # Pretend the kernels were built before TRITON_INTERPRET was set (compiled kind).
    monkeypatch.setattr(stale, "BUILT_FOR_INTERPRETER", False)
    q = torch.randn(1, 1, 5, 16)
    out = flash_attention(q, q, q)
    assert fa_module._kernels().BUILT_FOR_INTERPRETER is True
    assert relative_error(out, attention_reference(q.double(), q.double(), q.double())) < 1e-5


@pytest.mark.parametrize("mode, counts", [("full", (21, 24, 24)), ("quick", (4, 3, 3)), ("single", (1, 1, 1))])
def test_autotune_mode_sets_the_compiled_config_lists(monkeypatch, mode, counts):
    # The compiled kernels' lists, read as on a GPU; the interpreter always uses its own one config.
    module = fa_module._kernels()
    monkeypatch.setattr(module, "BUILT_FOR_INTERPRETER", False)
    monkeypatch.setattr(module, "AUTOTUNE", mode)
    monkeypatch.setattr(module, "QUICK_AUTOTUNE", mode in ("quick", "single"))
    lists = (module._fwd_configs(), module._dkdv_configs(), module._dq_configs())
    assert tuple(len(c) for c in lists) == counts
    assert all(len({str(c) for c in configs}) == len(configs) for configs in lists)  # no duplicates


def test_flag_set_after_triton_was_imported(tmp_path):
    # transformers imports triton, so in a test session triton may be loaded before any module sets
    # TRITON_INTERPRET; the kernels must still run interpreted (forward and backward).
    if torch.cuda.is_available():
        pytest.skip("the interpreter is only used without CUDA")
    script = """
import os, torch, triton
import triton.language
os.environ["TRITON_INTERPRET"] = "1"
from lean.kernels import attention_reference, flash_attention
q = torch.randn(1, 2, 9, 32, dtype=torch.float64).float().requires_grad_()
out = flash_attention(q, q, q, causal=True)
out.sum().backward()
ref = attention_reference(q.detach().double(), q.detach().double(), q.detach().double(), causal=True)
print(((out.double() - ref).norm() / ref.norm()).item(), bool(torch.isfinite(q.grad).all()))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    err, grads_finite = result.stdout.split()
    assert float(err) < 1e-5 and grads_finite == "True"


def test_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(RuntimeError, match="CUDA"):
        flash_attention(q, q, q)


@pytest.mark.parametrize(
    "shapes, kwargs, error, match",
    [
        (((2, 4, 32), (2, 4, 32), (2, 4, 32)), {}, ValueError, "4-d"),
        (((1, 3, 4, 32), (1, 2, 4, 32), (1, 2, 4, 32)), {}, ValueError, "multiple of key/value heads"),
        (((1, 2, 4, 32), (1, 2, 4, 64), (1, 2, 4, 64)), {}, ValueError, "head_dim"),
        (((1, 2, 4, 32), (1, 2, 5, 32), (1, 2, 4, 32)), {}, ValueError, "same shape"),
        (((2, 2, 4, 32), (1, 2, 4, 32), (1, 2, 4, 32)), {}, ValueError, "batch"),
        (((1, 2, 4, 512), (1, 2, 4, 512), (1, 2, 4, 512)), {}, ValueError, "head_dim 512"),
        (((1, 2, 4, 32),) * 3, {"key_padding_mask": torch.ones(1, 5, dtype=torch.bool)}, ValueError, "shape"),
        (((1, 2, 4, 32),) * 3, {"key_padding_mask": torch.zeros(1, 4)}, ValueError, "boolean or integer"),
    ],
)
def test_bad_input_is_refused_with_a_message(shapes, kwargs, error, match):
    q, k, v = (torch.randn(*s, device=DEVICE) for s in shapes)
    kwargs = {key: val.to(DEVICE) for key, val in kwargs.items()}
    with pytest.raises(error, match=match):
        flash_attention(q, k, v, **kwargs)


def test_unsupported_dtype_is_refused():
    q = torch.randn(1, 1, 4, 32, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="float64"):
        flash_attention(q, q, q)
