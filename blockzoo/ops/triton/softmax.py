"""Triton (log-)softmax over the last dim with a bool/additive mask or a causal pattern, and its backward.

Rows up to ``rowwise.MAX_FUSED_N`` elements are held in registers (several short rows per program);
longer rows take a split-row path: one kernel writes each chunk's (max, sum of exp) and a second
combines them and normalizes its chunk, walking the tiles backwards to find them still in L2.
A mask is read in place through its strides (stride 0 on broadcast dims), never expanded.
Fully masked rows give 0; a NaN or +inf score gives a NaN row, as in ``torch.softmax``. The backward reads
only the output and its gradient: entries whose log-softmax output is -inf (masked out, also by an
additive -inf) get a zero gradient.
Registered through ``registration.fast_op``: the ``blockzoo::softmax`` triton_op and an eager fast path.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from blockzoo.ops.triton import launch, rowwise
from blockzoo.ops.triton.registration import fast_op
from blockzoo.ops.triton.rowwise import chunk_sum, tile_coords

NO_MASK, BOOL_MASK, ADD_MASK = 0, 1, 2


@triton.jit
def _scores(x_ptr, m_ptr, rows, cols, M, N, stride_x, L, D1, D2, sm0, sm1, sm2, smn,
            MASK: tl.constexpr, CAUSAL: tl.constexpr, EVICT_LAST: tl.constexpr):
    """fp32 scores of a [R, B] tile: x plus the additive mask, -inf where masked or out of bounds.

    Causal rows load only up to the diagonal rounded up to 16 columns (masks stay constant over
    16-element groups, so loads stay vectorized), then drop the columns past the diagonal.
    """
    live = (rows < M) & (cols < N)
    if CAUSAL:
        diag = rows % L
        live = live & (cols < (diag // 16) * 16 + 16)
    r64 = rows.to(tl.int64)
    ptrs = x_ptr + r64 * stride_x + cols
    if EVICT_LAST:
        s = tl.load(ptrs, mask=live, other=float("-inf"), eviction_policy="evict_last").to(tl.float32)
    else:
        s = tl.load(ptrs, mask=live, other=float("-inf"), eviction_policy="evict_first").to(tl.float32)
    if CAUSAL:
        s = tl.where(cols <= diag, s, float("-inf"))
    if MASK != 0:
        outer = r64 // D2
        moff = (outer // D1) * sm0 + (outer % D1) * sm1 + (r64 % D2) * sm2 + cols.to(tl.int64) * smn
        mv = tl.load(m_ptr + moff, mask=live, other=0)
        if MASK == 1:
            s = tl.where(mv != 0, s, float("-inf"))
        else:
            s = s + mv.to(tl.float32)
    return s


@triton.jit
def _fwd_stats_kernel(x_ptr, m_ptr, pmax_ptr, psum_ptr, M, N, NC, stride_x, L, D1, D2, sm0, sm1, sm2, smn,
                      BLOCK_N: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr):
    """Split rows, pass 1: each chunk's max and sum of exp(s - max)."""
    row, rows, cols, chunk = tile_coords(NC, 1, BLOCK_N, False)
    s = _scores(x_ptr, m_ptr, rows, cols, M, N, stride_x, L, D1, D2, sm0, sm1, sm2, smn, MASK, CAUSAL, True)
    mx = tl.max(s)
    safe = tl.where(mx == float("-inf"), 0.0, mx)
    tl.store(pmax_ptr + row * NC + chunk, mx)
    tl.store(psum_ptr + row * NC + chunk, tl.sum(tl.exp(s - safe)))


@triton.jit
def _fwd_kernel(x_ptr, m_ptr, y_ptr, pmax_ptr, psum_ptr, M, N, NC, stride_x, L, D1, D2, sm0, sm1, sm2, smn,
                ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, MASK: tl.constexpr,
                CAUSAL: tl.constexpr, LOG: tl.constexpr, SPLIT: tl.constexpr):
    """Whole rows in registers, or (SPLIT) one chunk normalized with its row's combined chunk stats."""
    row, rows, cols, chunk = tile_coords(NC, ROWS, BLOCK_N, SPLIT)
    s = _scores(x_ptr, m_ptr, rows, cols, M, N, stride_x, L, D1, D2, sm0, sm1, sm2, smn, MASK, CAUSAL, False)
    if SPLIT:  # combine the row's chunk stats into scalars (broadcast into the tile for free)
        pc = tl.arange(0, BLOCK_C)
        cmax = tl.load(pmax_ptr + row * NC + pc, mask=pc < NC, other=float("-inf"))
        csum = tl.load(psum_ptr + row * NC + pc, mask=pc < NC, other=0.0)
        mx = tl.max(cmax, axis=0)
        safe = tl.where(mx == float("-inf"), 0.0, mx)
        total = tl.sum(csum * tl.exp(cmax - safe), axis=0)
        e = tl.exp(s - safe)
    else:
        mx = tl.max(s, axis=1)[:, None]
        safe = tl.where(mx == float("-inf"), 0.0, mx)
        e = tl.exp(s - safe)
        total = tl.sum(e, axis=1)[:, None]
    # total is 0 only for a row with nothing kept (e == 0 everywhere): zeros; a NaN (or +inf) score makes
    # it NaN, and the row NaN, as in torch.softmax
    denom = tl.where(total != 0, total, 1.0)
    if LOG:
        y = tl.where(total != 0, s - safe - tl.log(denom), 0.0)
    else:
        y = e * (1.0 / denom)
    tl.store(y_ptr + rows.to(tl.int64) * N + cols, y.to(y_ptr.dtype.element_ty), mask=(rows < M) & (cols < N))


@triton.jit
def _load_grads(y_ptr, dy_ptr, rows, cols, M, N, stride_dy, EVICT_LAST: tl.constexpr):
    live = (rows < M) & (cols < N)
    r64 = rows.to(tl.int64)
    if EVICT_LAST:
        y = tl.load(y_ptr + r64 * N + cols, mask=live, other=0.0, eviction_policy="evict_last")
        dy = tl.load(dy_ptr + r64 * stride_dy + cols, mask=live, other=0.0, eviction_policy="evict_last")
    else:
        y = tl.load(y_ptr + r64 * N + cols, mask=live, other=0.0, eviction_policy="evict_first")
        dy = tl.load(dy_ptr + r64 * stride_dy + cols, mask=live, other=0.0, eviction_policy="evict_first")
    return y.to(tl.float32), dy.to(tl.float32)


@triton.jit
def _bwd_stats_kernel(y_ptr, dy_ptr, pdot_ptr, plive_ptr, M, N, NC, stride_dy, BLOCK_N: tl.constexpr,
                      LOG: tl.constexpr):
    """Split rows, pass 1: each chunk's sum(dy * y) (softmax) or sum(dy) and any(y != 0) (log)."""
    row, rows, cols, chunk = tile_coords(NC, 1, BLOCK_N, False)
    y, dy = _load_grads(y_ptr, dy_ptr, rows, cols, M, N, stride_dy, True)
    off = row * NC + chunk
    if LOG:
        tl.store(pdot_ptr + off, tl.sum(dy))
        tl.store(plive_ptr + off, tl.max(tl.where(y != 0, 1.0, 0.0)))
    else:
        tl.store(pdot_ptr + off, tl.sum(dy * y))


@triton.jit
def _bwd_kernel(y_ptr, dy_ptr, dx_ptr, pdot_ptr, plive_ptr, M, N, NC, stride_dy, ROWS: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, LOG: tl.constexpr, SPLIT: tl.constexpr):
    """softmax: dx = y (dy - sum(dy y)); log: dx = dy - exp(y) sum(dy), 0 where y = -inf or the row is empty."""
    row, rows, cols, chunk = tile_coords(NC, ROWS, BLOCK_N, SPLIT)
    y, dy = _load_grads(y_ptr, dy_ptr, rows, cols, M, N, stride_dy, False)
    if SPLIT:
        dot = chunk_sum(pdot_ptr, row, NC, BLOCK_C)
        if LOG:
            live = chunk_sum(plive_ptr, row, NC, BLOCK_C) > 0
    else:
        if LOG:
            dot = tl.sum(dy, axis=1)[:, None]
            live = tl.max(tl.where(y != 0, 1.0, 0.0), axis=1)[:, None] > 0
        else:
            dot = tl.sum(dy * y, axis=1)[:, None]
    if LOG:
        dx = tl.where(live, tl.where(y != float("-inf"), dy - tl.exp(y) * dot, 0.0), 0.0)
    else:
        dx = y * (dy - dot)
    tl.store(dx_ptr + rows.to(tl.int64) * N + cols, dx.to(dx_ptr.dtype.element_ty), mask=(rows < M) & (cols < N))


def _coalesce(sizes: list[int], strides: list[int]) -> list[tuple[int, int]]:
    """Merge adjacent dims that index memory as one (size-1 dims dropped), outermost first."""
    dims: list[tuple[int, int]] = []
    for size, stride in reversed(list(zip(sizes, strides))):
        if size == 1:
            continue
        if dims and stride == dims[-1][1] * dims[-1][0]:
            dims[-1] = (dims[-1][0] * size, dims[-1][1])
        else:
            dims.append((size, stride))
    return dims[::-1]


def _mask_args(mask: Optional[torch.Tensor], x: torch.Tensor) -> tuple:
    """(mask tensor, kind, D1, D2, sm0, sm1, sm2, smn): the mask indexed per row through its strides.

    Rows of x are split as (i0, i1, i2) over at most three coalesced leading dims; a mask whose
    broadcast pattern needs more than three is materialized (rare: e.g. 5-D with alternating broadcasts).
    """
    if mask is None:
        return x, NO_MASK, 1, 1, 0, 0, 0, 0
    me = mask.expand(x.shape)
    dims = _coalesce(list(x.shape[:-1]), list(me.stride()[:-1]))
    if len(dims) > 3:
        me = me.contiguous()
        dims = _coalesce(list(x.shape[:-1]), list(me.stride()[:-1]))
    dims = [(1, 0)] * (3 - len(dims)) + dims
    kind = BOOL_MASK if mask.dtype == torch.bool else ADD_MASK
    return (me, kind, dims[1][0], dims[2][0], dims[0][1], dims[1][1], dims[2][1], me.stride(-1))


def _forward(x: torch.Tensor, mask: Optional[torch.Tensor], causal: bool, log: bool) -> torch.Tensor:
    n = x.shape[-1]
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if y.numel() == 0:
        return y
    x2 = rowwise.rows_view(x, n)
    m = x2.shape[0]
    rows_per_mat = x.shape[-2] if x.dim() > 1 else 1
    mt, kind, *geo = _mask_args(mask, x)
    if rowwise.use_split(n):
        chunk, nc, block_c, warps = rowwise.split_config(n)
        pmax = torch.empty((m, nc), dtype=torch.float32, device=x.device)
        psum = torch.empty_like(pmax)
        launch.launch(_fwd_stats_kernel, (m * nc,), x2, mt, pmax, psum, m, n, nc, x2.stride(0), rows_per_mat, *geo,
                      BLOCK_N=chunk, MASK=kind, CAUSAL=causal, num_warps=warps)
        launch.launch(_fwd_kernel, (m * nc,), x2, mt, y, pmax, psum, m, n, nc, x2.stride(0), rows_per_mat, *geo,
                      ROWS=1, BLOCK_N=chunk, BLOCK_C=block_c, MASK=kind, CAUSAL=causal, LOG=log, SPLIT=True,
                      num_warps=warps)
    else:
        rows, block_n, warps = rowwise.fused_config(m, n)
        launch.launch(_fwd_kernel, (launch.cdiv(m, rows),), x2, mt, y, y, y, m, n, 1, x2.stride(0), rows_per_mat, *geo,
                      ROWS=rows, BLOCK_N=block_n, BLOCK_C=1, MASK=kind, CAUSAL=causal, LOG=log, SPLIT=False,
                      num_warps=warps)
    return y


def _backward(y: torch.Tensor, dy: torch.Tensor, log: bool) -> torch.Tensor:
    n = y.shape[-1]
    dx = torch.empty_like(y, memory_format=torch.contiguous_format)
    if dx.numel() == 0:
        return dx
    y, dy2 = y.contiguous(), rowwise.rows_view(dy, n)
    m = dy2.shape[0]
    if rowwise.use_split(n):
        chunk, nc, block_c, warps = rowwise.split_config(n)
        pdot = torch.empty((m, nc), dtype=torch.float32, device=y.device)
        plive = torch.empty_like(pdot) if log else pdot
        launch.launch(_bwd_stats_kernel, (m * nc,), y, dy2, pdot, plive, m, n, nc, dy2.stride(0),
                      BLOCK_N=chunk, LOG=log, num_warps=warps)
        launch.launch(_bwd_kernel, (m * nc,), y, dy2, dx, pdot, plive, m, n, nc, dy2.stride(0),
                      ROWS=1, BLOCK_N=chunk, BLOCK_C=block_c, LOG=log, SPLIT=True, num_warps=warps)
    else:
        rows, block_n, warps = rowwise.fused_config(m, n)
        launch.launch(_bwd_kernel, (launch.cdiv(m, rows),), y, dy2, dx, dx, dx, m, n, 1, dy2.stride(0),
                      ROWS=rows, BLOCK_N=block_n, BLOCK_C=1, LOG=log, SPLIT=False, num_warps=warps)
    return dx


def _save(ctx, inputs: tuple, output: torch.Tensor) -> None:
    _, mask, _, log = inputs
    ctx.save_for_backward(output)
    ctx.log = log
    ctx.mask_meta = None if mask is None else (mask.shape, mask.dtype)


def _grads(ctx, dy: torch.Tensor, backward) -> tuple:
    (y,) = ctx.saved_tensors
    dx = backward(y, dy, ctx.log)
    dmask = None
    if ctx.needs_input_grad[1]:  # an additive mask that requires grad: d(x + mask) = dx, summed to its shape
        shape, dtype = ctx.mask_meta
        dmask = dx.float().sum_to_size(shape).to(dtype)
    return dx, dmask, None, None


_softmax = fast_op("softmax", _forward, _backward, save=_save, grads=_grads, differentiable=(0, 1))


def softmax(x: torch.Tensor, mask: Optional[torch.Tensor] = None, causal: bool = False,
            log: bool = False) -> torch.Tensor:
    """(Log-)softmax of ``x`` over its last dim; ``mask`` bool (True = keep) or additive, broadcastable to x."""
    return _softmax(x, mask, causal, log)
