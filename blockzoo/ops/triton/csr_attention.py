"""Element-sparse (CSR) attention in Triton: gather only the kept keys of each query row.

A program takes R query rows (consecutive in the layout's row order, so their lengths are
alike) and walks their kept keys C at a time: it gathers the K rows of the [R, C] slots, forms
the scores with q, and keeps one online softmax *per slot* (max, sum and a [R, C, D] partial
output) so the loop has no reduction across slots; the C partial softmaxes of a row are merged
once at the end. Base-2 exponentials with the scale folded in; fp32 arithmetic for any input
dtype; a row with nothing kept gives zeros (log-sum-exp +inf).

Backward recomputes the scores: a row-wise dQ kernel over the same layout (it also writes
delta = rowsum(dO * O)) and a column-wise dK/dV kernel over the transposed layout, looping over
the query heads of a key/value head's group (grouped-query heads: no atomics, no repeated K/V).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from blockzoo.ops.sparse.csr_mask import CsrMask
from blockzoo.ops.triton import launch as C
from blockzoo.ops.triton.attention_op import attention_op, grad_buffers, key_rows, query_heads, unit_stride

LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128)
_SHAPES = ((1, 16, 1), (2, 16, 2), (1, 32, 2), (1, 16, 2), (4, 16, 4), (2, 32, 4), (2, 16, 4), (8, 16, 8),
           (4, 32, 8), (4, 16, 8))  # (R, C, num_warps)


def _configs() -> list[triton.Config]:
    if C.interpreting():
        return [triton.Config({"R": 16, "C": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"R": r, "C": c}, num_warps=w, num_stages=2) for r, c, w in _SHAPES]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Keep tiles of at most 32 fp32 values per thread per [R, C, D] tensor."""
    d = kwargs.get("D", named_args.get("D"))
    fit = [c for c in configs if c.kwargs["R"] * c.kwargs["C"] * d <= 1024 * c.num_warps]
    return fit or configs[:1]


_KEY = ["L", "S", "D", "GROUP", "AVG", "HAS_KP"]


@triton.jit
def _slots(OFF, ORDER, g, off_stride, slot0, n_rows, R: tl.constexpr):
    """Rows of this program's R slots (in layout order), their [start, end) and the longest length."""
    slot = slot0 + tl.arange(0, R)
    live = slot < n_rows
    rows = tl.load(ORDER + g.to(tl.int64) * n_rows + slot, mask=live, other=0)
    base = OFF + g.to(tl.int64) * off_stride
    start = tl.load(base + rows, mask=live, other=0)
    end = tl.load(base + rows + 1, mask=live, other=0)
    return rows, live, start, end, tl.max(end - start, 0)


@triton.jit
def _chunk(Cb, start, end, c0, KPb, HAS_KP: tl.constexpr, C: tl.constexpr):
    """The indices [R, C] stored at entries c0 .. c0 + C of each row (key columns, or query rows of the
    transpose), and which of them are kept (inside the row and, with key padding, not padding)."""
    idx = start[:, None] + c0 + tl.arange(0, C)[None, :]
    valid = idx < end[:, None]
    cols = tl.load(Cb + idx, mask=valid, other=0)
    if HAS_KP:
        valid = valid & (tl.load(KPb + cols, mask=valid, other=0) != 0)
    return cols, valid


@triton.jit
def _gather(ptr, idx, stride, valid, D: tl.constexpr):
    """[R, C, D] fp32 rows ``idx`` ([R, C]) of a row-major matrix, zeros where not ``valid``."""
    p = ptr + idx[:, :, None].to(tl.int64) * stride + tl.arange(0, D)[None, None, :]
    return tl.load(p, mask=valid[:, :, None], other=0.0).to(tl.float32)


@triton.jit
def _rows_of(ptr, rows, stride, live, D: tl.constexpr):
    """[R, D] fp32 rows of a row-major matrix."""
    p = ptr + rows[:, None].to(tl.int64) * stride + tl.arange(0, D)[None, :]
    return tl.load(p, mask=live[:, None], other=0.0).to(tl.float32)


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, OFF, COLS, ORDER, KP, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
                skpb, H, GROUP, GSB, GSH, L, S, off_stride, col_stride, qk_scale, AVG,
                D: tl.constexpr, HAS_KP: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    bh, b, h, hk, g = query_heads(H, GROUP, GSB, GSH)
    rows, live, start, end, longest = _slots(OFF, ORDER, g, off_stride, tl.program_id(0) * R, L, R)
    q = _rows_of(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, rows, sqm, live, D)
    Kb = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    Vb = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    Cb = COLS + g.to(tl.int64) * col_stride
    m = tl.full([R, C], float("-inf"), dtype=tl.float32)
    l = tl.zeros([R, C], dtype=tl.float32)
    acc = tl.zeros([R, C, D], dtype=tl.float32)
    for c0 in range(0, longest, C):
        cols, valid = _chunk(Cb, start, end, c0, KP + b.to(tl.int64) * skpb, HAS_KP, C)
        k = _gather(Kb, cols, skn, valid, D)
        s = tl.where(valid, tl.sum(q[:, None, :] * k, 2) * qk_scale, float("-inf"))
        m_new = tl.maximum(m, s)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m - m_use)
        p = tl.math.exp2(s - m_use)
        l = l * alpha + p
        v = _gather(Vb, cols, svn, valid, D)
        acc = acc * alpha[:, :, None] + p[:, :, None] * v
        m = m_new
    row_max = tl.max(m, 1)
    row_use = tl.where(row_max == float("-inf"), 0.0, row_max)
    w = tl.math.exp2(m - row_use[:, None])
    total = tl.sum(l * w, 1)
    kept = total > 0
    out = tl.sum(acc * w[:, :, None], 1) / tl.where(kept, total, 1.0)[:, None]
    op = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + rows[:, None].to(tl.int64) * som + \
        tl.arange(0, D)[None, :]
    tl.store(op, out.to(O.dtype.element_ty), mask=live[:, None])
    lse = tl.where(kept, row_max + tl.math.log2(tl.where(kept, total, 1.0)), float("inf"))
    tl.store(LSE + bh.to(tl.int64) * L + rows, lse, mask=live)


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _dq_kernel(Q, K, V, O, DO, DQ, LSE, DELTA, OFF, COLS, ORDER, KP, sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
               sob, soh, som, sdb, sdh, sdm, skpb, H, GROUP, GSB, GSH, L, S, off_stride, col_stride, qk_scale,
               sm_scale, AVG, D: tl.constexpr, HAS_KP: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    bh, b, h, hk, g = query_heads(H, GROUP, GSB, GSH)
    rows, live, start, end, longest = _slots(OFF, ORDER, g, off_stride, tl.program_id(0) * R, L, R)
    q = _rows_of(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, rows, sqm, live, D)
    o = _rows_of(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh, rows, som, live, D)
    do = _rows_of(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh, rows, sdm, live, D)
    delta = tl.sum(do * o, 1)
    stat = bh.to(tl.int64) * L + rows
    tl.store(DELTA + stat, delta, mask=live)
    lse = tl.load(LSE + stat, mask=live, other=float("inf"))
    Kb = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    Vb = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    Cb = COLS + g.to(tl.int64) * col_stride
    dq = tl.zeros([R, C, D], dtype=tl.float32)
    for c0 in range(0, longest, C):
        cols, valid = _chunk(Cb, start, end, c0, KP + b.to(tl.int64) * skpb, HAS_KP, C)
        k = _gather(Kb, cols, skn, valid, D)
        v = _gather(Vb, cols, svn, valid, D)
        p = tl.where(valid, tl.math.exp2(tl.sum(q[:, None, :] * k, 2) * qk_scale - lse[:, None]), 0.0)
        ds = p * (tl.sum(do[:, None, :] * v, 2) - delta[:, None])
        dq += ds[:, :, None] * k
    dqp = DQ + bh.to(tl.int64) * L * D + rows[:, None].to(tl.int64) * D + tl.arange(0, D)[None, :]
    tl.store(dqp, (tl.sum(dq, 1) * sm_scale).to(DQ.dtype.element_ty), mask=live[:, None])


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, T_OFF, T_ROWS, T_ORDER, KP, sqb, sqh, sqm, skb, skh, skn,
                 svb, svh, svn, sdb, sdh, sdm, skpb, H, HK, GROUP, GSB, GSH, L, S, off_stride, col_stride, qk_scale,
                 sm_scale, AVG, D: tl.constexpr, HAS_KP: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    bhk = tl.program_id(1)
    b = bhk // HK
    hk = bhk % HK
    slot = tl.program_id(0) * R + tl.arange(0, R)
    live = slot < S
    g0 = b * GSB + hk * GROUP * GSH
    keys = tl.load(T_ORDER + g0.to(tl.int64) * S + slot, mask=live, other=0)
    used = live  # padding keys get zero gradients: they visit no query
    if HAS_KP:
        used = used & (tl.load(KP + b.to(tl.int64) * skpb + keys, mask=live, other=0) != 0)
    k = _rows_of(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh, keys, skn, live, D)
    v = _rows_of(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh, keys, svn, live, D)
    dk = tl.zeros([R, C, D], dtype=tl.float32)
    dv = tl.zeros([R, C, D], dtype=tl.float32)
    for j in range(GROUP):
        h = hk * GROUP + j
        g = b * GSB + h * GSH
        base = T_OFF + g.to(tl.int64) * off_stride
        start = tl.load(base + keys, mask=used, other=0)
        end = tl.load(base + keys + 1, mask=used, other=0)
        Qb = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        DOb = DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        stat = (b * H + h).to(tl.int64) * L
        Rb = T_ROWS + g.to(tl.int64) * col_stride
        for c0 in range(0, tl.max(end - start, 0), C):
            rows, valid = _chunk(Rb, start, end, c0, KP, False, C)  # key padding is applied to the keys above
            q = _gather(Qb, rows, sqm, valid, D)
            do = _gather(DOb, rows, sdm, valid, D)
            lse = tl.load(LSE + stat + rows, mask=valid, other=float("inf"))
            delta = tl.load(DELTA + stat + rows, mask=valid, other=0.0)
            p = tl.math.exp2(tl.sum(q * k[:, None, :], 2) * qk_scale - lse)
            dv += p[:, :, None] * do
            ds = p * (tl.sum(do * v[:, None, :], 2) - delta)
            dk += ds[:, :, None] * q
    out = bhk.to(tl.int64) * S * D + keys[:, None].to(tl.int64) * D + tl.arange(0, D)[None, :]
    tl.store(DK + out, (tl.sum(dk, 1) * sm_scale).to(DK.dtype.element_ty), mask=live[:, None])
    tl.store(DV + out, tl.sum(dv, 1).to(DV.dtype.element_ty), mask=live[:, None])


def _group_args(off: torch.Tensor, idx: torch.Tensor) -> tuple[int, int]:
    """(offsets stride, indices stride) per mask group: 0 for a layout shared by every group."""
    return (off.stride(0) if off.dim() == 2 else 0), (idx.stride(0) if idx.dim() == 2 else 0)


def _avg_bucket(nnz_rows: int) -> int:
    return C.next_pow2(max(1, nnz_rows))


def _fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, off: torch.Tensor, cols: torch.Tensor,
              order: torch.Tensor, t_off: torch.Tensor, t_rows: torch.Tensor, t_order: torch.Tensor,
              kp: Optional[torch.Tensor], gsb: int, gsh: int, avg: int,
              scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, L, D = q.shape
    HK, S = k.shape[1], k.shape[2]
    o = torch.empty((B, H, L, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    os_, cs = _group_args(off, cols)
    kpt = q if kp is None else kp
    C.launch(_fwd_kernel, lambda meta: (-(-L // meta["R"]), B * H), q, k, v, o, lse, off, cols, order, kpt,
             *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], kpt.stride(0),
             H, H // HK, gsb, gsh, L, S, os_, cs, scale * LOG2E, avg, D=D, HAS_KP=kp is not None)
    return o, lse


def _bwd_impl(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              lse: torch.Tensor, off: torch.Tensor, cols: torch.Tensor, order: torch.Tensor, t_off: torch.Tensor,
              t_rows: torch.Tensor, t_order: torch.Tensor, kp: Optional[torch.Tensor], gsb: int, gsh: int, avg: int,
              scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, L, D = q.shape
    HK, S = k.shape[1], k.shape[2]
    dq, dk, dv, delta = grad_buffers(q, k, v)
    os_, cs = _group_args(off, cols)
    kpt = q if kp is None else kp
    C.launch(_dq_kernel, lambda meta: (-(-L // meta["R"]), B * H), q, k, v, o, do, dq, lse, delta, off, cols,
             order, kpt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
             *do.stride()[:3], kpt.stride(0), H, H // HK, gsb, gsh, L, S, os_, cs,
             scale * LOG2E, scale, avg, D=D, HAS_KP=kp is not None)
    tos, trs = _group_args(t_off, t_rows)
    C.launch(_dkdv_kernel, lambda meta: (-(-S // meta["R"]), B * HK), q, k, v, do, dk, dv, lse, delta,
             t_off, t_rows, t_order, kpt, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
             *do.stride()[:3], kpt.stride(0), H, HK, H // HK, gsb, gsh, L, S, tos, trs, scale * LOG2E, scale, avg, D=D,
             HAS_KP=kp is not None)
    return dq, dk, dv


# 7 layout tensors (and the key-padding keep rows) follow q, k, v in the kernels' arguments
_attention = attention_op("csr_attention", _fwd_impl, _bwd_impl, n_layout=7)


def csr_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: CsrMask,
                  scale: float | None = None, key_keep: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over the kept (query, key) pairs of ``layout`` (a
    :class:`~blockzoo.ops.sparse.csr_mask.CsrMask`); q (B, H, L, D), k/v (B, H_kv, S, D). ``key_keep``: optional (B, S)
    bool, False for padding keys. Differentiable in q, k and v."""
    B, H, L, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"csr attention: head dim {D} is not one of {HEAD_DIMS}")
    if (layout.q_len, layout.kv_len) != (L, k.shape[2]):
        raise ValueError(f"layout is for L={layout.q_len}, S={layout.kv_len}; got L={L}, S={k.shape[2]}")
    gsb, gsh = layout.group_strides(B, H)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    avg = _avg_bucket(layout.nnz // max(1, layout.groups * L))
    return _attention(unit_stride(q), unit_stride(k), unit_stride(v), layout.row_offsets, layout.col_indices,
                      layout.row_order, layout.t_row_offsets, layout.t_col_indices, layout.t_row_order,
                      key_rows(key_keep, B, k.shape[2]), gsb, gsh, avg, scale)
