"""Fused attention (Triton) with its plain-PyTorch reference.

    from lean.kernels import flash_attention, attention_reference
    out = flash_attention(q, k, v, causal=True)          # q: (B, Hq, Sq, D), k/v: (B, Hkv, Sk, D)

Runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (slow; for tests). The kernels themselves
are in `_flash_attention_triton.py`; `python benchmarks/bench_attention.py` measures them.
"""

import contextlib
import importlib
import math
import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256

_triton_module = None


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    try:
        from triton import knobs
    except ImportError:  # an older triton without knobs reads the variable directly
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return bool(knobs.runtime.interpret)


def _kernels():
    """The jitted kernels, rebuilt if TRITON_INTERPRET changed since they were built.

    `triton.jit` chooses compiled or interpreted code when its decorator runs, so a process that
    imported the kernels before setting TRITON_INTERPRET would otherwise keep the wrong kind.
    """
    global _triton_module
    if _triton_module is None:
        from . import _flash_attention_triton as module

        _triton_module = module
    if _triton_module.BUILT_FOR_INTERPRETER != interpreter_enabled():
        _triton_module = importlib.reload(_triton_module)
    return _triton_module


def unsupported_reason(q, k=None, v=None):
    """Why `flash_attention` cannot run on these inputs, or None when it can. Never raises."""
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not supported (use float16, bfloat16 or float32)"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head_dim {q.shape[-1]} is larger than {MAX_HEAD_DIM}"
    if q.device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None
    if q.device.type == "cpu" and interpreter_enabled():
        return None
    return (
        f"tensors are on {q.device.type}; the Triton kernel needs a CUDA device, "
        "or TRITON_INTERPRET=1 to run (slowly) on the CPU"
    )


def _check_inputs(q, k, v, key_padding_mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-d tensor (batch, heads, seq, head_dim), got {getattr(t, 'shape', t)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype {q.dtype} is not supported; use float16, bfloat16 or float32")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    (b, hq, sq, d), (bk, hkv, sk, dk) = q.shape, k.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if bk != b:
        raise ValueError(f"q has batch {b} but k/v have batch {bk}")
    if dk != d:
        raise ValueError(f"q has head_dim {d} but k/v have head_dim {dk}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(
            f"query heads ({hq}) must be a multiple of key/value heads ({hkv}) for grouped-query attention"
        )
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim {d} is not supported (at most {MAX_HEAD_DIM})")
    if sq == 0 or sk == 0 or d == 0 or b == 0 or hq == 0:
        raise ValueError(f"empty input: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or tuple(key_padding_mask.shape) != (b, sk):
            raise ValueError(
                f"key_padding_mask must have shape (batch, k_len) = ({b}, {sk}), "
                f"got {tuple(getattr(key_padding_mask, 'shape', ()))}"
            )
        if key_padding_mask.dtype.is_floating_point or key_padding_mask.dtype.is_complex:
            raise ValueError(
                "key_padding_mask must be boolean or integer (True/1 = attend to this key), "
                f"got {key_padding_mask.dtype}; additive float masks are not supported"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")
    reason = unsupported_reason(q)
    if reason is not None:
        raise RuntimeError(f"flash_attention cannot run: {reason}")


def _last_dim_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _dot_precision(dtype):
    # fp32 callers asked for fp32 accuracy: keep the dots in IEEE fp32 rather than TF32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _next_power_of_2(n):
    return 1 << (max(int(n), 1) - 1).bit_length()


def _cdiv(a, b):
    return (a + b - 1) // b


# Every buffer a kernel must fill comes from these two, so tests can poison them (fill with NaN)
# and catch an element a kernel forgot to write.
def _empty_like(t):
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _empty_rows(b, h, s, device):
    return torch.empty((b, h, s), device=device, dtype=torch.float32)


def _forward(q, k, v, kpm, causal, sm_scale):
    mod = _kernels()
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    o = _empty_like(q)
    lse = _empty_rows(b, hq, sq, q.device)  # base-2 log-sum-exp of the scaled scores, per row
    kpm_arg = kpm if kpm is not None else lse  # any pointer; never read when HAS_KPM is False
    qk_scale = sm_scale * 1.4426950408889634  # log2(e): the kernel uses exp2

    def grid(meta):
        return (_cdiv(sq, meta["BLOCK_M"]), b * hq)

    mod._attn_fwd[grid](
        q, k, v, kpm_arg, o, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        kpm.stride(0) if kpm is not None else 0,
        qk_scale, hq, sq, sk, sk - sq, _next_power_of_2(sq), _next_power_of_2(sk),
        HEAD_DIM=d, GROUP=hq // hkv, CAUSAL=causal, HAS_KPM=kpm is not None,
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    return o, lse


def _backward(q, k, v, o, lse, kpm, do, causal, sm_scale):
    mod = _kernels()
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    do = _last_dim_contiguous(do)
    delta = _empty_rows(b, hq, sq, q.device)
    pre_block = 64 if not interpreter_enabled() else 16
    mod._attn_bwd_preprocess[(_cdiv(sq, pre_block), b * hq)](
        o, do, delta,
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        hq, sq, HEAD_DIM=d, BLOCK_M=pre_block,
    )
    dq, dk, dv = _empty_like(q), _empty_like(k), _empty_like(v)
    kpm_arg = kpm if kpm is not None else lse
    kpm_stride = kpm.stride(0) if kpm is not None else 0
    qk_scale = sm_scale * 1.4426950408889634
    common = dict(
        HEAD_DIM=d, GROUP=hq // hkv, CAUSAL=causal, HAS_KPM=kpm is not None,
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    mod._attn_bwd_dkdv[lambda meta: (_cdiv(sk, meta["BLOCK_N1"]), b * hkv)](
        q, k, v, do, lse, delta, kpm_arg, dk, dv,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        kpm_stride,
        sm_scale, qk_scale, hq, hkv, sq, sk, sk - sq, _next_power_of_2(sq), _next_power_of_2(sk),
        **common,
    )
    mod._attn_bwd_dq[lambda meta: (_cdiv(sq, meta["BLOCK_M2"]), b * hq)](
        q, k, v, do, lse, delta, kpm_arg, dq,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        kpm_stride,
        sm_scale, qk_scale, hq, sq, sk, sk - sq, _next_power_of_2(sq), _next_power_of_2(sk),
        **common,
    )
    return dq, dk, dv



def _on_device_of(t):
    # Triton launches on the current CUDA device; make it the tensors' one (cuda:1, ...).
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kpm, causal, sm_scale):
        with _on_device_of(q):
            o, lse = _forward(q, k, v, kpm, causal, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse, kpm)
        ctx.causal = causal
        ctx.sm_scale = sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, kpm = ctx.saved_tensors
        with _on_device_of(q):
            dq, dk, dv = _backward(q, k, v, o, lse, kpm, do, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None, None


def flash_attention(q, k, v, *, causal=False, key_padding_mask=None, sm_scale=None):
    """softmax(q k^T * sm_scale + mask) v in one fused pass, differentiable in q, k and v.

    q: (B, Hq, Sq, D); k, v: (B, Hkv, Sk, D) with Hq a multiple of Hkv (grouped-query attention).
    D up to 256; sizes that are not a power of two (or below 16) are zero-padded internally.
    float16, bfloat16 or float32. Returns (B, Hq, Sq, D) in the input dtype.

    causal: query i attends keys j <= i + (Sk - Sq), i.e. the mask is aligned to the bottom right,
        as with a KV cache (Sq new queries after Sk - Sq cached keys). Equal lengths give the
        usual lower-triangular mask.
    key_padding_mask: (B, Sk) bool or integer, True/1 for keys to attend to (a Hugging Face
        attention_mask), False/0 for padding.
    sm_scale: defaults to 1/sqrt(D).

    A query row that can see no key (all its keys padded, or causal with Sq > Sk) returns zeros.
    """
    _check_inputs(q, k, v, key_padding_mask)
    d = q.shape[-1]
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(d)
    kpm = None
    if key_padding_mask is not None:
        kpm = key_padding_mask.to(torch.int8).contiguous()  # (B, Sk), 1 = attend
    d_kernel = max(16, _next_power_of_2(d))  # tl.arange and tl.dot need powers of two >= 16
    if d_kernel != d:
        # Zero columns add nothing to q.k and produce zero output columns, sliced off below.
        pad = (0, d_kernel - d)
        q, k, v = (torch.nn.functional.pad(t, pad) for t in (q, k, v))
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    o = _FlashAttention.apply(q, k, v, kpm, bool(causal), float(sm_scale))
    return o[..., :d] if d_kernel != d else o


def attention_reference(q, k, v, *, causal=False, key_padding_mask=None, sm_scale=None):
    """The same attention in plain PyTorch, materialising the (Sq, Sk) scores; computes in the
    dtype it is given (pass float64 for a tight reference). Rows that see no key return zeros."""
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(d)
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=1)  # (B, Hq, Sk, D)
        v = v.repeat_interleave(hq // hkv, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * sm_scale  # (B, Hq, Sq, Sk)
    keep = torch.ones(b, 1, sq, sk, dtype=torch.bool, device=q.device)
    if causal:
        i = torch.arange(sq, device=q.device)[:, None]
        j = torch.arange(sk, device=q.device)[None, :]
        keep = keep & (j <= i + (sk - sq))
    if key_padding_mask is not None:
        keep = keep & key_padding_mask.bool()[:, None, None, :]
    scores = scores.masked_fill(~keep, float("-inf"))
    any_key = keep.any(dim=-1, keepdim=True)  # (B, 1, Sq, 1)
    probs = torch.softmax(scores.masked_fill(~any_key, 0.0), dim=-1) * any_key
    return torch.matmul(probs, v)
