"""Triton kernels for fused attention: forward, backward preprocess, dK/dV and dQ.

The wrapper lives in `flash_attention.py`; this module only holds the jitted kernels so that it can
be rebuilt when TRITON_INTERPRET changes (`triton.jit` picks compiled or interpreted code when the
decorator runs, i.e. when this module is imported).

Design (after Triton's fused-attention tutorial):
- forward: one program per (BLOCK_M queries, batch*head); keys/values stream through in BLOCK_N
  tiles with an online softmax in base 2 (sm_scale * log2(e) folded into one multiply), so the
  (Sq, Sk) score matrix never exists. Key ranges are split into a stage that needs no
  per-element mask (blocks fully below the causal diagonal and fully inside the sequence) and a
  masked stage (the diagonal band and the ragged tail).
- causal masking is bottom-right aligned: query i sees key j iff j <= i + (Sk - Sq), which is
  what a KV cache needs (Sq new queries against Sk cached keys).
- grouped-query attention: query head h reads key/value head h // (Hq // Hkv).
- rows that see no key at all (fully padded, or causal with Sq > Sk) produce 0 and a
  log-sum-exp of +inf, so the backward gives them zero probability.
- backward: delta = rowsum(O * dO) first, then one kernel that owns a key block and walks the
  queries of every query head in its group (dK, dV without atomics), and one that owns a query
  block and walks the keys (dQ).
"""

import os

import triton
import triton.language as tl
from triton import knobs

# Recorded so the wrapper can tell whether this module was built for the interpreter.
BUILT_FOR_INTERPRETER = bool(knobs.runtime.interpret)
# Triton 3.9's interpreter multiplies bfloat16 dot operands as their raw uint16 bits; it gets fp32
# copies instead (the roundings the kernel applies before each dot have already happened).
UPCAST_DOT_OPERANDS = tl.constexpr(BUILT_FOR_INTERPRETER)

# The kernels use only language builtins and this module's own jitted helpers, never
# triton.language.standard's jitted functions (tl.max, tl.sum, tl.zeros, tl.cdiv): those are
# compiled or interpreted according to TRITON_INTERPRET when triton itself was imported, which may
# precede the flag (transformers imports triton). Reductions go through tl.reduce with the
# standard combine functions, which the interpreter recognises and runs as numpy reductions.
_MAX = tl.standard._elementwise_max
_SUM = tl.standard._sum_combine


# LEAN_FLASH_AUTOTUNE=quick tunes over a few configs per kernel instead of about twenty, and =single
# takes the first of those untuned (for correctness tests): each config is one compile per (dtype,
# head dim, causal, ...) variant, which a time-boxed GPU run cannot afford twenty times over.
AUTOTUNE = os.environ.get("LEAN_FLASH_AUTOTUNE", "full").strip().lower()
QUICK_AUTOTUNE = AUTOTUNE in ("quick", "single")


def _trim(configs):
    return configs[:1] if AUTOTUNE == "single" else configs


def _fwd_configs():
    if not BUILT_FOR_INTERPRETER and QUICK_AUTOTUNE:
        return _trim([triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_stages=s, num_warps=w)
                      for bm, bn, s, w in ((128, 64, 3, 4), (128, 128, 3, 8), (128, 64, 4, 8), (64, 64, 3, 4))])
    if BUILT_FOR_INTERPRETER:
        # Small fixed tiles keep interpreted tests fast; BLOCK_M != BLOCK_N exercises a diagonal
        # band that spans several key blocks.
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_stages=1, num_warps=4)]
    configs = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_stages=s, num_warps=w)
        for bm in (64, 128)
        for bn in (32, 64, 128)
        for s in (2, 3, 4)
        for w in (4, 8)
    ]
    # 8 warps only pay off on 128x128 tiles; smaller tiles with 8 warps starve each warp.
    return [c for c in configs if not (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] < 128 * 128 and c.num_warps == 8)]


def _dkdv_configs():
    if BUILT_FOR_INTERPRETER:
        return [triton.Config({"BLOCK_M1": 16, "BLOCK_N1": 32}, num_stages=1, num_warps=4)]
    if QUICK_AUTOTUNE:
        return _trim([triton.Config({"BLOCK_M1": bm, "BLOCK_N1": bn}, num_stages=s, num_warps=w)
                      for bm, bn, s, w in ((32, 128, 3, 4), (64, 128, 3, 8), (64, 64, 3, 4))])
    return [
        triton.Config({"BLOCK_M1": bm, "BLOCK_N1": bn}, num_stages=s, num_warps=w)
        for bm, bn in ((32, 128), (64, 128), (32, 64), (64, 64))
        for s in (2, 3, 5)
        for w in (4, 8)
    ]


def _dq_configs():
    if BUILT_FOR_INTERPRETER:
        return [triton.Config({"BLOCK_M2": 32, "BLOCK_N2": 16}, num_stages=1, num_warps=4)]
    if QUICK_AUTOTUNE:
        return _trim([triton.Config({"BLOCK_M2": bm, "BLOCK_N2": bn}, num_stages=s, num_warps=w)
                      for bm, bn, s, w in ((128, 64, 3, 8), (128, 32, 3, 4), (64, 64, 3, 4))])
    return [
        triton.Config({"BLOCK_M2": bm, "BLOCK_N2": bn}, num_stages=s, num_warps=w)
        for bm, bn in ((128, 32), (128, 64), (64, 64), (64, 32))
        for s in (2, 3, 5)
        for w in (4, 8)
    ]


# Autotune keys use power-of-two buckets of the lengths rather than the lengths themselves, so a
# decoder generating one token at a time does not re-tune at every new key length.
_KEY = ["Q_BUCKET", "K_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_KPM", "GROUP"]


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr):
    if UPCAST_DOT_OPERANDS:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, kpm_base, stride_kn, stride_vn,
               lo, hi, offs_m, offs_n, offs_d, N_CTX_K, causal_offset, qk_scale,
               BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
               HAS_KPM: tl.constexpr, DOT_PRECISION: tl.constexpr):
    for start_n in tl.range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n  # (BLOCK_N,) key positions
        in_range = cols < N_CTX_K
        # K^T tile (HEAD_DIM, BLOCK_N); loads stay bounded even in the unmasked stage.
        kT = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None], mask=in_range[None, :], other=0.0)
        qk = _dot(q, kT, None, DOT_PRECISION)  # (BLOCK_M, BLOCK_N) raw scores
        if MASKED:
            keep = in_range[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + causal_offset)
            qk = tl.where(keep, qk, float("-inf"))
        if HAS_KPM:
            kpm = tl.load(kpm_base + cols, mask=in_range, other=0)
            qk = tl.where(kpm[None, :] != 0, qk, float("-inf"))
        # Running max in scaled log2 units; the scale is applied to the row max, then folded into
        # one multiply-add per score (qk_scale > 0 so max and scale commute).
        m_new = tl.maximum(m_i, tl.reduce(qk, 1, _MAX) * qk_scale)
        if MASKED or HAS_KPM:
            # A row with no visible key so far keeps m = -inf; subtract 0 instead so that
            # exp2(-inf - -inf) never makes a NaN.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_sub = m_new
        p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
        v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :], mask=in_range[:, None], other=0.0)
        acc = acc * alpha[:, None]
        acc = _dot(p.to(v.dtype), v, acc, DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_fwd_configs(), key=_KEY)
@triton.jit
def _attn_fwd(Q, K, V, KPM, Out, LSE,
              stride_qz, stride_qh, stride_qm,
              stride_kz, stride_kh, stride_kn,
              stride_vz, stride_vh, stride_vn,
              stride_oz, stride_oh, stride_om,
              stride_kpmz,
              qk_scale, H, N_CTX_Q, N_CTX_K, causal_offset, Q_BUCKET, K_BUCKET,
              HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_KPM: tl.constexpr, DOT_PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    off_hz = tl.program_id(1)
    off_z = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    off_hkv = off_h // GROUP

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_CTX_Q

    q_base = Q + off_z * stride_qz + off_h * stride_qh
    k_base = K + off_z * stride_kz + off_hkv * stride_kh
    v_base = V + off_z * stride_vz + off_hkv * stride_vh
    kpm_base = KPM + off_z * stride_kpmz

    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)

    full_end = (N_CTX_K // BLOCK_N) * BLOCK_N  # keys below this need no bounds mask
    if CAUSAL:
        # The first row of this tile sees keys j <= start_m + causal_offset: every key block
        # below that needs no mask. The last row sees up to start_m + BLOCK_M - 1 + causal_offset.
        diag_lo = (tl.maximum(start_m + causal_offset + 1, 0) // BLOCK_N) * BLOCK_N
        diag_lo = tl.minimum(diag_lo, full_end)
        hi = tl.minimum(start_m + BLOCK_M + causal_offset, N_CTX_K)
    else:
        diag_lo = full_end
        hi = N_CTX_K
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, kpm_base, stride_kn, stride_vn,
                               0, diag_lo, offs_m, offs_n, offs_d, N_CTX_K, causal_offset, qk_scale,
                               BLOCK_N, False, CAUSAL, HAS_KPM, DOT_PRECISION)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, kpm_base, stride_kn, stride_vn,
                               diag_lo, hi, offs_m, offs_n, offs_d, N_CTX_K, causal_offset, qk_scale,
                               BLOCK_N, True, CAUSAL, HAS_KPM, DOT_PRECISION)

    # Rows with no visible key: output 0, log-sum-exp +inf (zero probability in the backward).
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    acc = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))  # base 2, scaled units
    tl.store(LSE + off_hz.to(tl.int64) * N_CTX_Q + offs_m, lse, mask=row_ok)
    o_base = Out + off_z * stride_oz + off_h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], acc.to(Out.dtype.element_ty),
             mask=row_ok[:, None])


@triton.jit
def _attn_bwd_preprocess(Out, DO, Delta,
                         stride_oz, stride_oh, stride_om,
                         stride_doz, stride_doh, stride_dom,
                         H, N_CTX_Q,
                         HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    # delta_i = sum_d O[i, d] * dO[i, d]  (= sum_j P_ij dP_ij), one float per query row.
    off_hz = tl.program_id(1)
    off_z = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_CTX_Q
    o = tl.load(Out + off_z * stride_oz + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + off_z * stride_doz + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + off_hz.to(tl.int64) * N_CTX_Q + offs_m, tl.reduce(o * do, 1, _SUM), mask=row_ok)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                lo, hi, start_n, offs_m, offs_n, offs_d, N_CTX_Q, causal_offset, qk_scale,
                BLOCK_M1: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    cols = start_n + offs_n  # (BLOCK_N1,) key positions owned by this program
    for start_m in tl.range(lo, hi, BLOCK_M1):
        start_m = tl.multiple_of(start_m, BLOCK_M1)
        rows = start_m + offs_m  # (BLOCK_M1,)
        row_ok = rows < N_CTX_Q
        qT = tl.load(q_base + rows[None, :] * stride_qm + offs_d[:, None], mask=row_ok[None, :], other=0.0)
        # Rows past the end read lse=+inf, so their probabilities are exactly 0.
        lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
        qkT = _dot(k, qT, None, DOT_PRECISION) * qk_scale  # (BLOCK_N1, BLOCK_M1)
        pT = tl.math.exp2(qkT - lse[None, :])
        if MASKED:
            pT = tl.where(cols[:, None] <= rows[None, :] + causal_offset, pT, 0.0)
        do = tl.load(do_base + rows[:, None] * stride_dom + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        dv = _dot(pT.to(do.dtype), do, dv, DOT_PRECISION)
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        dpT = _dot(v, tl.trans(do), None, DOT_PRECISION)  # (BLOCK_N1, BLOCK_M1)
        dsT = pT * (dpT - delta[None, :])
        dk = _dot(dsT.to(qT.dtype), tl.trans(qT), dk, DOT_PRECISION)
    return dk, dv


@triton.autotune(configs=_dkdv_configs(), key=_KEY)
@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, Delta, KPM, DK, DV,
                   stride_qz, stride_qh, stride_qm,
                   stride_kz, stride_kh, stride_kn,
                   stride_vz, stride_vh, stride_vn,
                   stride_doz, stride_doh, stride_dom,
                   stride_dkz, stride_dkh, stride_dkn,
                   stride_dvz, stride_dvh, stride_dvn,
                   stride_kpmz,
                   sm_scale, qk_scale, H, H_KV, N_CTX_Q, N_CTX_K, causal_offset, Q_BUCKET, K_BUCKET,
                   HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, CAUSAL: tl.constexpr,
                   HAS_KPM: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N1
    off_bh = tl.program_id(1)  # over batch * key/value heads
    off_z = (off_bh // H_KV).to(tl.int64)
    off_hkv = (off_bh % H_KV).to(tl.int64)

    offs_n = start_n + tl.arange(0, BLOCK_N1)
    offs_m = tl.arange(0, BLOCK_M1)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N_CTX_K

    k = tl.load(K + off_z * stride_kz + off_hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)
    v = tl.load(V + off_z * stride_vz + off_hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)
    dk = tl.full([BLOCK_N1, HEAD_DIM], 0.0, tl.float32)
    dv = tl.full([BLOCK_N1, HEAD_DIM], 0.0, tl.float32)

    if CAUSAL:
        # Query i sees key j iff i >= j - causal_offset. Rows from q_lo may see part of this key
        # block (masked stage); rows from q_full see all of it (no mask needed).
        q_lo = (tl.maximum(start_n - causal_offset, 0) // BLOCK_M1) * BLOCK_M1
        q_full = (tl.maximum(start_n + BLOCK_N1 - 1 - causal_offset, 0) + BLOCK_M1 - 1) // BLOCK_M1 * BLOCK_M1
        q_full = tl.maximum(q_full, q_lo)
    else:
        q_lo = 0
        q_full = 0

    # Sum over the query heads that share this key/value head (grouped-query attention).
    for g in range(GROUP):
        off_h = off_hkv * GROUP + g
        off_hz = off_z * H + off_h
        q_base = Q + off_z * stride_qz + off_h * stride_qh
        do_base = DO + off_z * stride_doz + off_h * stride_doh
        lse_base = LSE + off_hz * N_CTX_Q
        delta_base = Delta + off_hz * N_CTX_Q
        if CAUSAL:
            dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                                 q_lo, tl.minimum(q_full, N_CTX_Q), start_n, offs_m, tl.arange(0, BLOCK_N1),
                                 offs_d, N_CTX_Q, causal_offset, qk_scale, BLOCK_M1, True, DOT_PRECISION)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm, stride_dom,
                             q_full, N_CTX_Q, start_n, offs_m, tl.arange(0, BLOCK_N1),
                             offs_d, N_CTX_Q, causal_offset, qk_scale, BLOCK_M1, False, DOT_PRECISION)

    if HAS_KPM:
        # A padded key has zero probability for every query, so its gradients are exactly 0;
        # the other keys' gradients do not depend on it (lse and delta came from the forward).
        kpm = tl.load(KPM + off_z * stride_kpmz + offs_n, mask=col_ok, other=0)
        dk = tl.where(kpm[:, None] != 0, dk, 0.0)
        dv = tl.where(kpm[:, None] != 0, dv, 0.0)
    dk = dk * sm_scale  # dS/dK carries the softmax scale
    tl.store(DK + off_z * stride_dkz + off_hkv * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + off_z * stride_dvz + off_hkv * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, kpm_base, stride_kn, stride_vn,
              lo, hi, offs_m, offs_n, offs_d, N_CTX_K, causal_offset, qk_scale,
              BLOCK_N2: tl.constexpr, MASKED: tl.constexpr, HAS_KPM: tl.constexpr,
              DOT_PRECISION: tl.constexpr):
    for start_n in tl.range(lo, hi, BLOCK_N2):
        start_n = tl.multiple_of(start_n, BLOCK_N2)
        cols = start_n + offs_n
        in_range = cols < N_CTX_K
        # Keys past the end load as zeros: their V rows are 0 (dP = 0) and their K rows are 0,
        # so they add nothing to dQ without a bounds mask on P.
        kT = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None], mask=in_range[None, :], other=0.0)
        vT = tl.load(v_base + cols[None, :] * stride_vn + offs_d[:, None], mask=in_range[None, :], other=0.0)
        qk = _dot(q, kT, None, DOT_PRECISION) * qk_scale  # (BLOCK_M2, BLOCK_N2)
        p = tl.math.exp2(qk - lse[:, None])
        if MASKED:
            p = tl.where(cols[None, :] <= offs_m[:, None] + causal_offset, p, 0.0)
        if HAS_KPM:
            kpm = tl.load(kpm_base + cols, mask=in_range, other=0)
            p = tl.where(kpm[None, :] != 0, p, 0.0)
        dp = _dot(do, vT, None, DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(kT.dtype), tl.trans(kT), dq, DOT_PRECISION)
    return dq


@triton.autotune(configs=_dq_configs(), key=_KEY)
@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, Delta, KPM, DQ,
                 stride_qz, stride_qh, stride_qm,
                 stride_kz, stride_kh, stride_kn,
                 stride_vz, stride_vh, stride_vn,
                 stride_doz, stride_doh, stride_dom,
                 stride_dqz, stride_dqh, stride_dqm,
                 stride_kpmz,
                 sm_scale, qk_scale, H, N_CTX_Q, N_CTX_K, causal_offset, Q_BUCKET, K_BUCKET,
                 HEAD_DIM: tl.constexpr, GROUP: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_KPM: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M2
    off_hz = tl.program_id(1)
    off_z = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    off_hkv = off_h // GROUP

    offs_m = start_m + tl.arange(0, BLOCK_M2)
    offs_n = tl.arange(0, BLOCK_N2)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_CTX_Q

    q = tl.load(Q + off_z * stride_qz + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + off_z * stride_doz + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + off_hz.to(tl.int64) * N_CTX_Q + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + off_hz.to(tl.int64) * N_CTX_Q + offs_m, mask=row_ok, other=0.0)
    k_base = K + off_z * stride_kz + off_hkv * stride_kh
    v_base = V + off_z * stride_vz + off_hkv * stride_vh
    kpm_base = KPM + off_z * stride_kpmz
    dq = tl.full([BLOCK_M2, HEAD_DIM], 0.0, tl.float32)

    if CAUSAL:
        diag_lo = (tl.maximum(start_m + causal_offset + 1, 0) // BLOCK_N2) * BLOCK_N2
        hi = tl.minimum(start_m + BLOCK_M2 + causal_offset, N_CTX_K)
        diag_lo = tl.minimum(diag_lo, tl.maximum(hi, 0))
    else:
        diag_lo = N_CTX_K
        hi = N_CTX_K
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, kpm_base, stride_kn, stride_vn,
                   0, diag_lo, offs_m, offs_n, offs_d, N_CTX_K, causal_offset, qk_scale,
                   BLOCK_N2, False, HAS_KPM, DOT_PRECISION)
    if CAUSAL:
        dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, kpm_base, stride_kn, stride_vn,
                       diag_lo, hi, offs_m, offs_n, offs_d, N_CTX_K, causal_offset, qk_scale,
                       BLOCK_N2, True, HAS_KPM, DOT_PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + off_z * stride_dqz + off_h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])
