"""Triton LayerNorm (and the kernels RMSNorm shares, selected by ``RMS``): forward and backward.

Forward: rows up to ``rowwise.MAX_FUSED_N`` are held in registers (several short rows per program);
longer rows are split in chunks: one kernel writes each chunk's (mean, M2) (or sum of squares) and a
second combines them (Chan's formula) and normalizes its chunk. Only mean and rstd (fp32, (M,)) are
saved. Backward: a persistent grid, each program walking row tiles of one column chunk and keeping
its dw/db partial sums in registers; a (programs, n) fp32 buffer is then summed over programs
(two-stage reduction, no atomics). Split rows get their row sums from a stats kernel first.
Registered through ``registration.fast_op``: the ``blockzoo::layer_norm`` triton_op and an eager fast path.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from blockzoo.ops.triton import launch, rowwise
from blockzoo.ops.triton.registration import fast_op
from blockzoo.ops.triton.rowwise import chunk_sum, tile_coords


@triton.jit
def _load_rows(ptr, rows, cols, M, N, stride, EVICT_LAST: tl.constexpr):
    live = (rows < M) & (cols < N)
    ptrs = ptr + rows.to(tl.int64) * stride + cols
    if EVICT_LAST:
        v = tl.load(ptrs, mask=live, other=0.0, eviction_policy="evict_last")
    else:
        v = tl.load(ptrs, mask=live, other=0.0, eviction_policy="evict_first")
    return v.to(tl.float32)


@triton.jit
def _fwd_stats_kernel(x_ptr, p1_ptr, p2_ptr, M, N, NC, stride_x, BLOCK_N: tl.constexpr, RMS: tl.constexpr):
    """Split rows, pass 1: per chunk, (mean, M2) for LayerNorm or (sum of squares) for RMSNorm."""
    row, rows, cols, chunk = tile_coords(NC, 1, BLOCK_N, False)
    x = _load_rows(x_ptr, rows, cols, M, N, stride_x, True)
    off = row * NC + chunk
    if RMS:
        tl.store(p1_ptr + off, tl.sum(x * x))
    else:
        mu = tl.sum(x) / tl.minimum(N - chunk * BLOCK_N, BLOCK_N)
        xc = tl.where(cols < N, x - mu, 0.0)
        tl.store(p1_ptr + off, mu)
        tl.store(p2_ptr + off, tl.sum(xc * xc))


@triton.jit
def _fwd_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, p1_ptr, p2_ptr, M, N, NC, stride_x, inv_n, eps,
                ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, RMS: tl.constexpr,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr, SPLIT: tl.constexpr):
    """Normalize whole rows held in registers, or (SPLIT) one chunk with its row's combined chunk stats."""
    row, rows, cols, chunk = tile_coords(NC, ROWS, BLOCK_N, SPLIT)
    live = (rows < M) & (cols < N)
    x = _load_rows(x_ptr, rows, cols, M, N, stride_x, False)
    if SPLIT:  # combine the row's chunk stats into scalars (broadcast into the tile for free)
        if RMS:
            mean = 0.0
            var = chunk_sum(p1_ptr, row, NC, BLOCK_C) * inv_n
        else:
            pc = tl.arange(0, BLOCK_C)
            cnt = tl.where(pc < NC, tl.minimum(N - pc * BLOCK_N, BLOCK_N), 0).to(tl.float32)
            mu = tl.load(p1_ptr + row * NC + pc, mask=pc < NC, other=0.0)
            m2 = tl.load(p2_ptr + row * NC + pc, mask=pc < NC, other=0.0)
            mean = tl.sum(cnt * mu, axis=0) * inv_n
            d = mu - mean
            var = tl.sum(m2 + cnt * d * d, axis=0) * inv_n
            tl.store(mean_ptr + row, mean, mask=chunk == 0)
        xc = x - mean
        rstd = tl.rsqrt(var + eps)
        tl.store(rstd_ptr + row, rstd, mask=chunk == 0)
    else:
        if RMS:
            xc = x
        else:
            mean = tl.sum(x, axis=1)[:, None] * inv_n
            xc = tl.where(live, x - mean, 0.0)
            tl.store(mean_ptr + rows, mean, mask=rows < M)
        rstd = tl.rsqrt(tl.sum(xc * xc, axis=1)[:, None] * inv_n + eps)
        tl.store(rstd_ptr + rows, rstd, mask=rows < M)
    y = xc * rstd
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows.to(tl.int64) * N + cols, y.to(y_ptr.dtype.element_ty), mask=live)


@triton.jit
def _xhat_wdy(x_ptr, dy_ptr, w_ptr, mean_ptr, rstd_ptr, rows, cols, M, N, stride_x, stride_dy,
              RMS: tl.constexpr, HAS_W: tl.constexpr, EVICT_LAST: tl.constexpr):
    """(xhat, dy, w * dy, rstd) of a tile; xhat is 0 outside the matrix."""
    x = _load_rows(x_ptr, rows, cols, M, N, stride_x, EVICT_LAST)
    dy = _load_rows(dy_ptr, rows, cols, M, N, stride_dy, EVICT_LAST)
    rstd = tl.load(rstd_ptr + rows, mask=rows < M, other=0.0)
    if RMS:
        xhat = x * rstd
    else:
        mean = tl.load(mean_ptr + rows, mask=rows < M, other=0.0)
        xhat = tl.where((rows < M) & (cols < N), (x - mean) * rstd, 0.0)
    wdy = dy
    if HAS_W:
        wdy = dy * tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    return xhat, dy, wdy, rstd


@triton.jit
def _bwd_stats_kernel(x_ptr, dy_ptr, w_ptr, mean_ptr, rstd_ptr, p1_ptr, p2_ptr, M, N, NC, stride_x, stride_dy,
                      BLOCK_N: tl.constexpr, RMS: tl.constexpr, HAS_W: tl.constexpr):
    """Split rows, backward pass 1: per chunk, sum(xhat * w dy) and sum(w dy)."""
    row, rows, cols, chunk = tile_coords(NC, 1, BLOCK_N, False)
    xhat, dy, wdy, rstd = _xhat_wdy(x_ptr, dy_ptr, w_ptr, mean_ptr, rstd_ptr, rows, cols, M, N, stride_x,
                                    stride_dy, RMS, HAS_W, True)
    off = row * NC + chunk
    tl.store(p1_ptr + off, tl.sum(xhat * wdy))
    if not RMS:
        tl.store(p2_ptr + off, tl.sum(wdy))


@triton.jit
def _bwd_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, mean_ptr, rstd_ptr, p1_ptr, p2_ptr, dw_ptr, db_ptr,
                M, N, NC, stride_x, stride_dy, inv_n, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, SPLIT: tl.constexpr,
                STAGES: tl.constexpr):
    """dx = rstd (w dy - xhat mean(xhat w dy) - mean(w dy)); program (g, c) also writes dw/db partial row g."""
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    dw = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    tiles = tl.cdiv(M, ROWS)
    for t in tl.range(pid, tiles, tl.num_programs(0), num_stages=STAGES):  # prefetch the next tile
        tile = t
        if SPLIT:  # split rows: start with the rows the stats kernel left in L2
            tile = tiles - 1 - t
        rows = tile * ROWS + tl.arange(0, ROWS)[:, None]
        xhat, dy, wdy, rstd = _xhat_wdy(x_ptr, dy_ptr, w_ptr, mean_ptr, rstd_ptr, rows, cols, M, N, stride_x,
                                        stride_dy, RMS, HAS_W, False)
        if SPLIT:  # ROWS == 1: the row's sums are scalars
            c1 = chunk_sum(p1_ptr, tile, NC, BLOCK_C) * inv_n
            if not RMS:
                c2 = chunk_sum(p2_ptr, tile, NC, BLOCK_C) * inv_n
        else:
            c1 = tl.sum(xhat * wdy, axis=1)[:, None] * inv_n
            if not RMS:
                c2 = tl.sum(wdy, axis=1)[:, None] * inv_n
        if RMS:
            dx = (wdy - xhat * c1) * rstd
        else:
            dx = (wdy - xhat * c1 - c2) * rstd
        tl.store(dx_ptr + rows.to(tl.int64) * N + cols, dx.to(dx_ptr.dtype.element_ty),
                 mask=(rows < M) & (cols < N))
        if HAS_W:
            dw += dy * xhat
        if HAS_B:
            db += dy
    part = pid * N + cols
    if HAS_W:
        tl.store(dw_ptr + part, tl.sum(dw, axis=0)[None, :], mask=cols < N)
    if HAS_B:
        tl.store(db_ptr + part, tl.sum(db, axis=0)[None, :], mask=cols < N)


def norm_forward(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                 eps: float, rms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd) of LayerNorm (or RMSNorm: mean is empty) over the last ``n`` elements."""
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    m = x.numel() // n if n else 0
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    mean = torch.empty(0 if rms else m, dtype=torch.float32, device=x.device)
    if y.numel() == 0:
        return y, mean, rstd
    x2 = rowwise.rows_view(x, n)
    w = weight.contiguous() if weight is not None else rstd
    b = bias.contiguous() if bias is not None else rstd
    mp = mean if not rms else rstd
    flags = dict(RMS=rms, HAS_W=weight is not None, HAS_B=bias is not None)
    if rowwise.use_split(n):
        chunk, nc, block_c, warps = rowwise.split_config(n)
        p1 = torch.empty((m, nc), dtype=torch.float32, device=x.device)
        p2 = p1 if rms else torch.empty_like(p1)
        launch.launch(_fwd_stats_kernel, (m * nc,), x2, p1, p2, m, n, nc, x2.stride(0), BLOCK_N=chunk, RMS=rms,
                      num_warps=warps)
        launch.launch(_fwd_kernel, (m * nc,), x2, y, w, b, mp, rstd, p1, p2, m, n, nc, x2.stride(0), 1.0 / n, eps,
                      ROWS=1, BLOCK_N=chunk, BLOCK_C=block_c, SPLIT=True, num_warps=warps, **flags)
    else:
        rows, block_n, warps = rowwise.fused_config(m, n)
        launch.launch(_fwd_kernel, (launch.cdiv(m, rows),), x2, y, w, b, mp, rstd, rstd, rstd, m, n, 1, x2.stride(0),
                      1.0 / n, eps, ROWS=rows, BLOCK_N=block_n, BLOCK_C=1, SPLIT=False, num_warps=warps, **flags)
    return y, mean, rstd


def norm_backward(dy: torch.Tensor, x: torch.Tensor, n: int, weight: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor,
                  rms: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw, db); dw/db are empty when there is no weight/bias."""
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    params = [p for p in (weight, bias) if p is not None]
    if dx.numel() == 0:
        grads = [torch.zeros_like(p) for p in params]
    else:
        grads = _launch_backward(dy, x, n, weight, bias, mean, rstd, rms, dx)
    dw = grads[0] if weight is not None else x.new_empty(0)
    db = grads[-1] if bias is not None else x.new_empty(0)
    return dx, dw, db


def _launch_backward(dy, x, n, weight, bias, mean, rstd, rms, dx) -> list[torch.Tensor]:
    """Write dx; return the weight/bias grads (those that exist) from their two-stage reduction."""
    m = rstd.numel()
    x2, dy2 = rowwise.rows_view(x, n), rowwise.rows_view(dy, n)
    w = weight.contiguous() if weight is not None else rstd
    mp = mean if not rms else rstd
    if rowwise.use_split(n, rowwise.MAX_FUSED_N // 2):  # five live tiles per element: half the forward's registers
        chunk, nc, block_c, warps = rowwise.split_config(n, rowwise.SPLIT_CHUNK // 2)
        rows = 1
        p1 = torch.empty((m, nc), dtype=torch.float32, device=x.device)
        p2 = p1 if rms else torch.empty_like(p1)
        launch.launch(_bwd_stats_kernel, (m * nc,), x2, dy2, w, mp, rstd, p1, p2, m, n, nc, x2.stride(0),
                      dy2.stride(0), BLOCK_N=chunk, RMS=rms, HAS_W=weight is not None, num_warps=warps)
    else:
        rows, chunk, _ = rowwise.fused_config(m, n)
        nc, block_c, p1, p2 = 1, 1, rstd, rstd
    warps = rowwise.bwd_warps_for(rows * chunk)
    g = launch.persistent_programs(x.device, warps, launch.cdiv(m, rows), nc)
    params = [p for p in (weight, bias) if p is not None]
    parts = [torch.empty((g, n), dtype=torch.float32, device=x.device) for _ in params]
    dw_part = parts[0] if weight is not None else rstd
    db_part = parts[-1] if bias is not None else rstd
    launch.launch(_bwd_kernel, (g, nc), x2, dy2, dx, w, mp, rstd, p1, p2, dw_part, db_part, m, n, nc, x2.stride(0),
                  dy2.stride(0), 1.0 / n, ROWS=rows, BLOCK_N=chunk, BLOCK_C=block_c, RMS=rms, HAS_W=weight is not None,
                  HAS_B=bias is not None, SPLIT=nc > 1, STAGES=rowwise.BWD_STAGES, num_warps=warps)
    if not params:
        return []
    sums = rowwise.col_sums(parts, [p.dtype for p in params])
    return [s.view(p.shape) for s, p in zip(sums, params)]


def _forward(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
             eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return norm_forward(x, n, weight, bias, eps, rms=False)


def _backward(dy: torch.Tensor, x: torch.Tensor, n: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
              mean: torch.Tensor, rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return norm_backward(dy, x, n, weight, bias, mean, rstd, rms=False)


def _save(ctx, inputs: tuple, output: tuple) -> None:
    x, n, weight, bias, _ = inputs
    ctx.n = n
    ctx.save_for_backward(x, weight, bias, *output[1:])


def _grads(ctx, dy: torch.Tensor, backward) -> tuple:
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = backward(dy, x, ctx.n, weight, bias, mean, rstd)
    return dx, None, dw if weight is not None else None, db if bias is not None else None, None


_layer_norm = fast_op("layer_norm", _forward, _backward, save=_save, grads=_grads, differentiable=(0, 2, 3))


def layer_norm(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               eps: float) -> torch.Tensor:
    """LayerNorm of ``x`` over its last ``n`` elements (x viewed as (M, n)), optional weight/bias of n elements."""
    return _layer_norm(x, n, weight, bias, eps)
