"""Block-sparse attention in Triton: forward and backward over the tiles of a :class:`BlockMask`.

Forward (flash-attention-2 style): one program per (query block, batch x head) walks the block's
full tiles (no mask) and then its partial tiles (bitmask, or for a band mask the band condition
on the tile's row and column indices), keeping an online softmax in base 2;
it writes O and the row log-sum-exp (base 2, +inf for a row with nothing kept, which then
gives zeros). Backward recomputes the scores: a dQ kernel walks the same lists (and writes
delta = rowsum(dO * O) for the dK/dV kernel), and a dK/dV kernel per (key block, batch x kv
head) walks the transposed lists of every query head of its group, so grouped-query heads need
no atomics and no repeated K/V. fp16/bf16 (fp32 accumulation) and fp32 (exact dots).
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from blockzoo.ops.block_mask import BlockMask
from blockzoo.ops.triton import launch as C
from blockzoo.ops.triton.attention_op import attention_op, grad_buffers, key_rows, query_heads, unit_stride

LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128)


def _configs() -> list[triton.Config]:
    if C.interpreting():
        return [triton.Config({}, num_warps=4, num_stages=1)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3, 4)]


_KEY = ["L", "S", "GROUP", "BM", "BN", "D", "HAS_KP", "PREC", "BAND"]


@triton.jit
def _keep(BITS, bidx, BM: tl.constexpr, BN: tl.constexpr, WORDS: tl.constexpr, PER_WORD: tl.constexpr,
          TRANSPOSED: tl.constexpr):
    """The tile's bitmask as bool [BM, BN] (or [BN, BM] when TRANSPOSED).

    The tile's BM x WORDS words are loaded as one dense block (no per-element gather) and each
    word is expanded into its PER_WORD bits: bit b of word w is column w * PER_WORD + b (BN =
    WORDS * PER_WORD), which a row-major reshape of [.., WORDS, PER_WORD] lays out in order.
    """
    base = BITS + bidx * tl.full([], BM * WORDS, tl.int64)
    r = tl.arange(0, BM)
    wi = tl.arange(0, WORDS)
    sh = tl.arange(0, PER_WORD)
    if TRANSPOSED:
        w = tl.load(base + r[None, :] * WORDS + wi[:, None])  # [WORDS, BM]
        bits = (w[:, None, :] >> sh[None, :, None]) & 1  # [WORDS, PER_WORD, BM]
        keep = tl.reshape(bits, (BN, BM)) != 0
    else:
        w = tl.load(base + r[:, None] * WORDS + wi[None, :])  # [BM, WORDS]
        bits = (w[:, :, None] >> sh[None, None, :]) & 1  # [BM, WORDS, PER_WORD]
        keep = tl.reshape(bits, (BM, BN)) != 0
    return keep


@triton.jit
def _band_keep(offs_m, offs_n, lo, hi, S, TRANSPOSED: tl.constexpr):
    """Bool [BM, BN] (or [BN, BM] when TRANSPOSED): lo <= j - i <= hi and j < S for rows i = offs_m,
    columns j = offs_n. Rows past L need no mask: their lse is +inf (backward) and they are not stored."""
    first = offs_m + lo  # each row's first and last kept column
    last = tl.minimum(offs_m + hi, S - 1)
    if TRANSPOSED:
        keep = (offs_n[:, None] >= first[None, :]) & (offs_n[:, None] <= last[None, :])
    else:
        keep = (offs_n[None, :] >= first[:, None]) & (offs_n[None, :] <= last[:, None])
    return keep


@triton.jit
def _tile_keep(BITS, bidx, offs_m, offs_n, lo, hi, S, BM: tl.constexpr, BN: tl.constexpr, WORDS: tl.constexpr,
               PER_WORD: tl.constexpr, TRANSPOSED: tl.constexpr, BAND: tl.constexpr):
    """A partial tile's keep mask: the band condition (BAND) or the tile's bitmask."""
    if BAND:
        keep = _band_keep(offs_m, offs_n, lo, hi, S, TRANSPOSED)
    else:
        keep = _keep(BITS, bidx, BM, BN, WORDS, PER_WORD, TRANSPOSED)
    return keep


@triton.jit
def _load_rows(ptr, offs, stride, n_valid, D: tl.constexpr, CHECK: tl.constexpr):
    """[len(offs), D] rows ``offs`` of a row-major matrix, zeros past ``n_valid`` when CHECK."""
    p = ptr + offs[:, None].to(tl.int64) * stride + tl.arange(0, D)[None, :]
    if CHECK:
        return tl.load(p, mask=(offs < n_valid)[:, None], other=0.0)
    return tl.load(p)


@triton.jit
def _key_kept(KPb, offs_n, S):
    """[BN] bool: the keys ``offs_n`` are not padding (KPb: this batch's uint8 keep row)."""
    return tl.load(KPb + offs_n, mask=offs_n < S, other=0) != 0


@triton.jit
def _fwd_tile(acc, m_i, l_i, q, Kb, Vb, stride_kn, stride_vn, offs_m, n, BITS, bidx, KPb, qk_scale, S, lo, hi,
              BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, WORDS: tl.constexpr, PER_WORD: tl.constexpr,
              MASKED: tl.constexpr, EVEN_N: tl.constexpr, HAS_KP: tl.constexpr, PREC: tl.constexpr,
              BAND: tl.constexpr):
    offs_n = n * BN + tl.arange(0, BN)
    k = _load_rows(Kb, offs_n, stride_kn, S, D, MASKED and not EVEN_N)
    qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    if MASKED:
        keep = _tile_keep(BITS, bidx, offs_m, offs_n, lo, hi, S, BM, BN, WORDS, PER_WORD, False, BAND)
        qk = tl.where(keep, qk, float("-inf"))
    if HAS_KP:
        qk = tl.where(_key_kept(KPb, offs_n, S)[None, :], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    if MASKED or HAS_KP:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    p = tl.math.exp2(qk - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(Vb, offs_n, stride_vn, S, D, MASKED and not EVEN_N)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, m_new, l_i


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, FULL_OFF, FULL_COLS, PART_OFF, PART_COLS, BITS, ROW_ORDER, KP,
                sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, skpb,
                H, GROUP, GSB, GSH, NM, L, S, qk_scale, band_lo, band_hi,
                BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, WORDS: tl.constexpr, PER_WORD: tl.constexpr,
                EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, HAS_KP: tl.constexpr, PREC: tl.constexpr,
                BAND: tl.constexpr):
    bh, b, h, hk, g = query_heads(H, GROUP, GSB, GSH)
    m = tl.load(ROW_ORDER + g * NM + tl.program_id(0))
    row = g * NM + m
    offs_m = m * BM + tl.arange(0, BM)
    q = _load_rows(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, offs_m, sqm, L, D, not EVEN_M)
    Kb = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    Vb = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    KPb = KP + b.to(tl.int64) * skpb
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    start = tl.load(FULL_OFF + row)
    end = tl.load(FULL_OFF + row + 1)
    for t in range(start, end):
        n = tl.load(FULL_COLS + t)
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, Kb, Vb, skn, svn, offs_m, n, BITS, t, KPb, qk_scale, S,
                                  band_lo, band_hi, BM, BN, D, WORDS, PER_WORD, False, EVEN_N, HAS_KP, PREC, BAND)
    start = tl.load(PART_OFF + row)
    end = tl.load(PART_OFF + row + 1)
    for t in range(start, end):
        n = tl.load(PART_COLS + t)
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, Kb, Vb, skn, svn, offs_m, n, BITS, t, KPb, qk_scale, S,
                                  band_lo, band_hi, BM, BN, D, WORDS, PER_WORD, True, EVEN_N, HAS_KP, PREC, BAND)
    live = l_i > 0
    out = acc / tl.where(live, l_i, 1.0)[:, None]
    lse = tl.where(live, m_i + tl.math.log2(tl.where(live, l_i, 1.0)), float("inf"))
    op = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None].to(tl.int64) * som + \
        tl.arange(0, D)[None, :]
    tl.store(op, out.to(O.dtype.element_ty), mask=(offs_m < L)[:, None])
    tl.store(LSE + bh.to(tl.int64) * L + offs_m, lse, mask=offs_m < L)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, Kb, Vb, stride_kn, stride_vn, offs_m, n, BITS, bidx, KPb, qk_scale, S, lo, hi,
             BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, WORDS: tl.constexpr, PER_WORD: tl.constexpr,
             MASKED: tl.constexpr, EVEN_N: tl.constexpr, HAS_KP: tl.constexpr, PREC: tl.constexpr,
             BAND: tl.constexpr):
    offs_n = n * BN + tl.arange(0, BN)
    k = _load_rows(Kb, offs_n, stride_kn, S, D, MASKED and not EVEN_N)
    v = _load_rows(Vb, offs_n, stride_vn, S, D, MASKED and not EVEN_N)
    qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    p = tl.math.exp2(qk - lse[:, None])
    if MASKED:
        keep = _tile_keep(BITS, bidx, offs_m, offs_n, lo, hi, S, BM, BN, WORDS, PER_WORD, False, BAND)
        p = tl.where(keep, p, 0.0)
    if HAS_KP:
        p = tl.where(_key_kept(KPb, offs_n, S)[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PREC)


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit
def _dq_kernel(Q, K, V, O, DO, DQ, LSE, DELTA, FULL_OFF, FULL_COLS, PART_OFF, PART_COLS, BITS, ROW_ORDER, KP,
               sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som, sdb, sdh, sdm, skpb,
               H, GROUP, GSB, GSH, NM, L, S, qk_scale, sm_scale, band_lo, band_hi,
               BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, WORDS: tl.constexpr, PER_WORD: tl.constexpr,
               EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, HAS_KP: tl.constexpr, PREC: tl.constexpr,
               BAND: tl.constexpr):
    bh, b, h, hk, g = query_heads(H, GROUP, GSB, GSH)
    m = tl.load(ROW_ORDER + g * NM + tl.program_id(0))
    row = g * NM + m
    offs_m = m * BM + tl.arange(0, BM)
    q = _load_rows(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, offs_m, sqm, L, D, not EVEN_M)
    o = _load_rows(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh, offs_m, som, L, D, not EVEN_M)
    do = _load_rows(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh, offs_m, sdm, L, D, not EVEN_M)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    stat = bh.to(tl.int64) * L + offs_m
    tl.store(DELTA + stat, delta, mask=offs_m < L)
    lse = tl.load(LSE + stat, mask=offs_m < L, other=float("inf"))
    Kb = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    Vb = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    KPb = KP + b.to(tl.int64) * skpb
    dq = tl.zeros([BM, D], dtype=tl.float32)
    start = tl.load(FULL_OFF + row)
    end = tl.load(FULL_OFF + row + 1)
    for t in range(start, end):
        n = tl.load(FULL_COLS + t)
        dq = _dq_tile(dq, q, do, lse, delta, Kb, Vb, skn, svn, offs_m, n, BITS, t, KPb, qk_scale, S, band_lo,
                      band_hi, BM, BN, D, WORDS, PER_WORD, False, EVEN_N, HAS_KP, PREC, BAND)
    start = tl.load(PART_OFF + row)
    end = tl.load(PART_OFF + row + 1)
    for t in range(start, end):
        n = tl.load(PART_COLS + t)
        dq = _dq_tile(dq, q, do, lse, delta, Kb, Vb, skn, svn, offs_m, n, BITS, t, KPb, qk_scale, S, band_lo,
                      band_hi, BM, BN, D, WORDS, PER_WORD, True, EVEN_N, HAS_KP, PREC, BAND)
    dqp = DQ + bh.to(tl.int64) * L * D + offs_m[:, None].to(tl.int64) * D + tl.arange(0, D)[None, :]
    tl.store(dqp, (dq * sm_scale).to(DQ.dtype.element_ty), mask=(offs_m < L)[:, None])


@triton.jit
def _dkdv_tile(dk, dv, k, v, kept, Qb, DOb, LSEb, DELTAb, sqm, sdm, m, offs_n, BITS, bidx, qk_scale, L, S, lo, hi,
               BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, WORDS: tl.constexpr, PER_WORD: tl.constexpr,
               MASKED: tl.constexpr, EVEN_M: tl.constexpr, HAS_KP: tl.constexpr, PREC: tl.constexpr,
               BAND: tl.constexpr):
    offs_m = m * BM + tl.arange(0, BM)
    check = MASKED and not EVEN_M
    q = _load_rows(Qb, offs_m, sqm, L, D, check)
    do = _load_rows(DOb, offs_m, sdm, L, D, check)
    if check:
        lse = tl.load(LSEb + offs_m, mask=offs_m < L, other=float("inf"))
        delta = tl.load(DELTAb + offs_m, mask=offs_m < L, other=0.0)
    else:
        lse = tl.load(LSEb + offs_m)
        delta = tl.load(DELTAb + offs_m)
    qk_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
    p_t = tl.math.exp2(qk_t - lse[None, :])
    if MASKED:
        keep = _tile_keep(BITS, bidx, offs_m, offs_n, lo, hi, S, BM, BN, WORDS, PER_WORD, True, BAND)
        p_t = tl.where(keep, p_t, 0.0)
    if HAS_KP:
        p_t = tl.where(kept[:, None], p_t, 0.0)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=PREC)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PREC)
    return dk, dv


@triton.autotune(configs=_configs(), key=_KEY)
@triton.jit
def _dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, FULL_OFF_T, FULL_ROWS_T, PART_OFF_T, PART_ROWS_T,
                 PART_BITS_T, BITS, KP, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdb, sdh, sdm, skpb,
                 H, HK, GROUP, GSB, GSH, NN, L, S, qk_scale, sm_scale, band_lo, band_hi,
                 BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, WORDS: tl.constexpr, PER_WORD: tl.constexpr,
                 EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, HAS_KP: tl.constexpr, PREC: tl.constexpr,
                 BAND: tl.constexpr):
    n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // HK
    hk = bhk % HK
    offs_n = n * BN + tl.arange(0, BN)
    k = _load_rows(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh, offs_n, skn, S, D, not EVEN_N)
    v = _load_rows(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh, offs_n, svn, S, D, not EVEN_N)
    if HAS_KP:
        kept = _key_kept(KP + b.to(tl.int64) * skpb, offs_n, S)
    else:
        kept = offs_n < S
    dk = tl.zeros([BN, D], dtype=tl.float32)
    dv = tl.zeros([BN, D], dtype=tl.float32)
    for j in range(GROUP):
        h = hk * GROUP + j
        g = b * GSB + h * GSH
        col = g * NN + n
        Qb = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        DOb = DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        stat = (b * H + h).to(tl.int64) * L
        start = tl.load(FULL_OFF_T + col)
        end = tl.load(FULL_OFF_T + col + 1)
        for t in range(start, end):
            m = tl.load(FULL_ROWS_T + t)
            dk, dv = _dkdv_tile(dk, dv, k, v, kept, Qb, DOb, LSE + stat, DELTA + stat, sqm, sdm, m, offs_n, BITS,
                                t, qk_scale, L, S, band_lo, band_hi, BM, BN, D, WORDS, PER_WORD, False, EVEN_M,
                                HAS_KP, PREC, BAND)
        start = tl.load(PART_OFF_T + col)
        end = tl.load(PART_OFF_T + col + 1)
        for t in range(start, end):
            m = tl.load(PART_ROWS_T + t)
            bidx = tl.load(PART_BITS_T + t)
            dk, dv = _dkdv_tile(dk, dv, k, v, kept, Qb, DOb, LSE + stat, DELTA + stat, sqm, sdm, m, offs_n, BITS,
                                bidx, qk_scale, L, S, band_lo, band_hi, BM, BN, D, WORDS, PER_WORD, True, EVEN_M,
                                HAS_KP, PREC, BAND)
    out = bhk.to(tl.int64) * S * D + offs_n[:, None].to(tl.int64) * D + tl.arange(0, D)[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=(offs_n < S)[:, None])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=(offs_n < S)[:, None])


def _meta(q: torch.Tensor, k: torch.Tensor, block_m: int, block_n: int, kp: torch.Tensor | None, band: bool) -> dict:
    return _meta_of(block_m, block_n, q.shape[3], q.shape[2] % block_m == 0, k.shape[2] % block_n == 0,
                    kp is not None, q.dtype == torch.float32, band)


@functools.lru_cache(maxsize=256)
def _meta_of(block_m: int, block_n: int, d: int, even_m: bool, even_n: bool, has_kp: bool, fp32: bool,
             band: bool) -> dict:
    """The kernels' constexprs (one dict per combination: callers must not modify it)."""
    return dict(BM=block_m, BN=block_n, D=d, WORDS=max(1, block_n // 32), PER_WORD=min(block_n, 32),
                EVEN_M=even_m, EVEN_N=even_n, HAS_KP=has_kp, PREC="ieee" if fp32 else "tf32", BAND=band)


def _fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, full_off: torch.Tensor, full_cols: torch.Tensor,
              part_off: torch.Tensor, part_cols: torch.Tensor, bits: torch.Tensor, row_order: torch.Tensor,
              full_off_t: torch.Tensor, full_rows_t: torch.Tensor, part_off_t: torch.Tensor,
              part_rows_t: torch.Tensor, part_bits_t: torch.Tensor, kp: Optional[torch.Tensor], gsb: int, gsh: int,
              block_m: int, block_n: int, scale: float, band: bool = False, band_lo: int = 0,
              band_hi: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, L, D = q.shape
    HK, S = k.shape[1], k.shape[2]
    o = torch.empty((B, H, L, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    nm = -(-L // block_m)
    kpt = q if kp is None else kp
    C.launch(_fwd_kernel, (nm, B * H), q, k, v, o, lse, full_off, full_cols, part_off, part_cols, bits, row_order,
             kpt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], kpt.stride(0),
             H, H // HK, gsb, gsh, nm, L, S, scale * LOG2E, band_lo, band_hi,
             **_meta(q, k, block_m, block_n, kp, band))
    return o, lse


def _bwd_impl(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              lse: torch.Tensor, full_off: torch.Tensor, full_cols: torch.Tensor, part_off: torch.Tensor,
              part_cols: torch.Tensor, bits: torch.Tensor, row_order: torch.Tensor, full_off_t: torch.Tensor,
              full_rows_t: torch.Tensor, part_off_t: torch.Tensor, part_rows_t: torch.Tensor,
              part_bits_t: torch.Tensor, kp: Optional[torch.Tensor], gsb: int, gsh: int, block_m: int, block_n: int,
              scale: float, band: bool = False, band_lo: int = 0,
              band_hi: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, L, D = q.shape
    HK, S = k.shape[1], k.shape[2]
    dq, dk, dv, delta = grad_buffers(q, k, v)
    nm, nn = -(-L // block_m), -(-S // block_n)
    meta = _meta(q, k, block_m, block_n, kp, band)
    kpt = q if kp is None else kp
    C.launch(_dq_kernel, (nm, B * H), q, k, v, o, do, dq, lse, delta, full_off, full_cols, part_off, part_cols,
             bits, row_order, kpt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
             *do.stride()[:3], kpt.stride(0), H, H // HK, gsb, gsh, nm, L, S,
             scale * LOG2E, scale, band_lo, band_hi, **meta)
    C.launch(_dkdv_kernel, (nn, B * HK), q, k, v, do, dk, dv, lse, delta, full_off_t, full_rows_t, part_off_t,
             part_rows_t, part_bits_t, bits, kpt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
             *do.stride()[:3], kpt.stride(0), H, HK, H // HK, gsb, gsh, nn, L, S, scale * LOG2E, scale, band_lo,
             band_hi, **meta)
    return dq, dk, dv


# 12 layout tensors (and the key-padding keep rows) follow q, k, v in the kernels' arguments; then
# gsb, gsh, block_m, block_n, scale and the band (band, band_lo, band_hi: keep lo <= j - i <= hi)
_attention = attention_op("blocksparse_attention", _fwd_impl, _bwd_impl, n_layout=12)


def check_supported(q: torch.Tensor, bm: BlockMask) -> str | None:
    """Why this kernel cannot run these inputs (None when it can)."""
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} is not one of {HEAD_DIMS}"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype} is not fp16/bf16/fp32"
    return None


def blocksparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm: BlockMask,
                          scale: float | None = None, key_keep: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over the tiles of ``bm``; q (B, H, L, D), k/v (B, H_kv, S, D).

    ``key_keep``: optional (B, S) bool, False for padding keys (applied in the kernels, so a
    static block mask keeps its structure). Rows with nothing kept give zeros. Differentiable in
    q, k and v.
    """
    B, H, L, D = q.shape
    if (bm.q_len, bm.kv_len) != (L, k.shape[2]):
        raise ValueError(f"block mask is for L={bm.q_len}, S={bm.kv_len}; got L={L}, S={k.shape[2]}")
    if bm.device != q.device:
        raise ValueError(f"block mask is on {bm.device} but q is on {q.device}")
    why = check_supported(q, bm)
    if why is not None:
        raise ValueError(f"block-sparse attention: {why}")
    gsb, gsh = bm.group_strides(B, H)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    lo, hi = bm.band if bm.band is not None else (0, 0)
    return _attention(unit_stride(q), unit_stride(k), unit_stride(v), bm.full_offsets, bm.full_cols, bm.part_offsets,
                      bm.part_cols, bm.bits, bm.row_order, bm.full_offsets_t, bm.full_rows_t, bm.part_offsets_t,
                      bm.part_rows_t, bm.part_bits_t, key_rows(key_keep, B, k.shape[2]), gsb, gsh, bm.block_m,
                      bm.block_n, scale, bm.band is not None, lo, hi)

