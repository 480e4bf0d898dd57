"""Triton ``dropout(activation(x + bias), p)`` with the dropout mask regenerated from a seed.

Mask. x is viewed as rows of N = x.shape[-1] elements. Element (r, c) uses 16 bits of one Philox4x32-10
draw, ``tl.randint4x(seed, r * ceil(N / 8) + c // 8)``: the four 32-bit words give 8 values, element
``c % 8 = 2 * word + half`` takes the low (half 0) or high (half 1) 16 bits of its word, and is kept when
those bits are >= round(p * 65536). One Philox draw serves 8 elements (one ``tl.rand`` per element is
what makes ``torch.compile``'s dropout compute-bound); the drop probability is p rounded to a multiple
of 2**-16 while the kept values are scaled by exactly 1 / (1 - p), as ``F.dropout`` does. The mask
depends only on (seed, row, column, N), never on tile sizes, and is never stored: backward draws it
again. ``dropout_keep_mask`` reproduces it.

Autograd saves x, bias and the seed (a CPU int64 tensor: an int would be baked into a compiled graph);
backward recomputes x + bias. dbias is a two-stage column sum of dx as stored (in x's dtype, as PyTorch's
gradient is): each program sums its rows into a float32 partial row, then torch sums the few partial rows.
Registered through ``registration.fast_op``: the ``blockzoo::dropout_bias_act`` custom op (opaque to
torch.compile) and an eager fast path.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from blockzoo.ops.triton import launch
from blockzoo.ops.triton.activations import act_fwd, act_grad
from blockzoo.ops.triton.registration import fast_op

_BITS = 16  # random bits per element
_SEED_HIGH = 2**31  # seeds drawn from torch's generator lie in [0, _SEED_HIGH)
BWD_PROGRAMS_PER_SM = 4  # backward grid: about this many programs per SM (each sums a band of rows for dbias)


def _configs() -> list[triton.Config]:
    if launch.interpreting():
        return [triton.Config({"BLOCK_M": 4, "BLOCK_N": 64}, num_warps=4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w)
            for bm, bn, w in ((4, 1024, 4), (8, 1024, 8), (16, 512, 8), (8, 512, 4), (2, 2048, 8), (32, 256, 8))]


@triton.jit
def _keep(seed, rows, col0, N, threshold, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Bool [BLOCK_M, BLOCK_N] keep mask for ``rows`` x columns col0 .. col0 + BLOCK_N (col0 % 8 == 0)."""
    groups = col0 // 8 + tl.arange(0, BLOCK_N // 8)
    ctr = rows[:, None].to(tl.int64) * tl.cdiv(N, 8) + groups[None, :]
    r0, r1, r2, r3 = tl.randint4x(seed, ctr)
    low = 0xFFFF
    lo = tl.join(tl.join(r0 & low, r2 & low), tl.join(r1 & low, r3 & low))
    hi = tl.join(tl.join(r0 >> 16, r2 >> 16), tl.join(r1 >> 16, r3 >> 16))
    bits = tl.reshape(tl.join(lo, hi), (BLOCK_M, BLOCK_N))  # column 8g + 2 * word + half
    return bits.to(tl.int32, bitcast=True) >= threshold


@triton.autotune(configs=_configs(), key=["N", "ACT", "DROPOUT"])
@triton.jit(do_not_specialize=["seed", "threshold"])
def _fwd_kernel(X, B, Y, M, N, stride_xm, stride_ym, seed, threshold, scale,
                ACT: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col0 = tl.program_id(1) * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    z = tl.load(X + r64 * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    y = act_fwd(z, ACT)
    if DROPOUT:
        y = tl.where(_keep(seed, rows, col0, N, threshold, BLOCK_M, BLOCK_N), y * scale, 0.0)
    tl.store(Y + r64 * stride_ym + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.autotune(configs=_configs(), key=["N", "ACT", "DROPOUT", "NEED_DB"])
@triton.jit(do_not_specialize=["seed", "threshold"])
def _bwd_kernel(DY, X, B, DX, DB_PART, M, N, rows_per_prog, stride_dym, stride_xm, stride_dxm,
                seed, threshold, scale,
                ACT: tl.constexpr, HAS_BIAS: tl.constexpr, DROPOUT: tl.constexpr, NEED_DB: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    col0 = tl.program_id(1) * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid_m * rows_per_prog
    row_end = tl.minimum(row_start + rows_per_prog, M)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & col_ok[None, :]
        r64 = rows.to(tl.int64)[:, None]
        z = tl.load(X + r64 * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            z += b[None, :]
        dy = tl.load(DY + r64 * stride_dym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dx = dy * act_grad(z, ACT)
        if DROPOUT:
            dx = tl.where(_keep(seed, rows, col0, N, threshold, BLOCK_M, BLOCK_N), dx * scale, 0.0)
        dx = dx.to(DX.dtype.element_ty)
        tl.store(DX + r64 * stride_dxm + cols[None, :], dx, mask=mask)
        if NEED_DB:  # the sum of dx as stored (as PyTorch sums its rounded dz); masked entries are 0
            acc += tl.sum(dx.to(tl.float32), axis=0)
    if NEED_DB:
        tl.store(DB_PART + pid_m * N + cols, acc, mask=col_ok)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t`` as an (M, n) matrix with unit column stride (a view when possible)."""
    t2 = t.reshape(t.shape[:-1].numel(), n)
    return t2 if n <= 1 or t2.stride(1) == 1 else t2.contiguous()


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def _threshold(p: float) -> int:
    return round(p * (1 << _BITS))


def _seed_value(seed: torch.Tensor | None) -> int:
    return 0 if seed is None else int(seed.item())  # a CPU tensor: no device sync


def _forward(x: torch.Tensor, bias: torch.Tensor | None, p: float, activation: str,
             seed: torch.Tensor | None) -> torch.Tensor:
    n = x.shape[-1]
    x2, bias = _rows(x, n), _contiguous(bias)
    m = x2.shape[0]
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if y.numel():
        def grid(meta):
            return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"])

        launch.launch(_fwd_kernel, grid, x2, bias if bias is not None else x2, y, m, n, x2.stride(0), n,
                      _seed_value(seed), _threshold(p), 1.0 / (1.0 - p), ACT=activation, HAS_BIAS=bias is not None,
                      DROPOUT=p > 0.0)
    return y


def _backward(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, p: float, activation: str,
              seed: torch.Tensor | None, need_colsum: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, float32 column sums of dx over all rows, or an empty tensor unless ``need_colsum``)."""
    n = x.shape[-1]
    x2, dy2, bias = _rows(x, n), _rows(dy, n), _contiguous(bias)
    m = x2.shape[0]
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if dx.numel() == 0:
        return dx, x.new_zeros(n if need_colsum else 0, dtype=torch.float32)
    # enough programs to fill the GPU; each sums rows_per_prog rows (a multiple of every BLOCK_M)
    progs_m = max(1, min(triton.cdiv(m, 32), BWD_PROGRAMS_PER_SM * launch.num_sms(x.device) // triton.cdiv(n, 512)))
    rows_per_prog = triton.cdiv(triton.cdiv(m, progs_m), 32) * 32
    progs_m = triton.cdiv(m, rows_per_prog)
    part = torch.empty((progs_m, n) if need_colsum else (0,), dtype=torch.float32, device=x.device)

    def grid(meta):
        return progs_m, triton.cdiv(n, meta["BLOCK_N"])

    launch.launch(_bwd_kernel, grid, dy2, x2, bias if bias is not None else x2, dx, part, m, n, rows_per_prog,
                  dy2.stride(0), x2.stride(0), n, _seed_value(seed), _threshold(p), 1.0 / (1.0 - p),
                  ACT=activation, HAS_BIAS=bias is not None, DROPOUT=p > 0.0, NEED_DB=need_colsum)
    return dx, part.sum(0) if need_colsum else part


def _forward_fake(x, bias, p, activation, seed):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _backward_fake(dy, x, bias, p, activation, seed, need_colsum):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(x.shape[-1] if need_colsum else 0, dtype=torch.float32))


def _save(ctx, inputs: tuple, output: torch.Tensor) -> None:
    x, bias, p, activation, seed = inputs
    ctx.save_for_backward(x, bias, seed)
    ctx.p, ctx.activation = p, activation


def _grads(ctx, dy: torch.Tensor, backward) -> tuple:
    x, bias, seed = ctx.saved_tensors
    need_db = bias is not None and ctx.needs_input_grad[1]
    dx, colsum = backward(dy, x, bias, ctx.p, ctx.activation, seed, need_db)
    return dx, (colsum.to(bias.dtype) if need_db else None), None, None, None


_dropout_bias_act = fast_op("dropout_bias_act", _forward, _backward, save=_save, grads=_grads, differentiable=(0, 1),
                            fake=_forward_fake, backward_fake=_backward_fake)


def bias_act_backward(dy: torch.Tensor, z: torch.Tensor, activation: str,
                      need_colsum: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dz = dy * activation'(z) and its float32 column sums (for ``linear_act``'s backward)."""
    backward = _dropout_bias_act.backward if launch.eager(dy, z) else _dropout_bias_act.backward_op
    return backward(dy, z, None, 0.0, activation, None, need_colsum)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def dropout_bias_act(x: torch.Tensor, bias: torch.Tensor | None, p: float, activation: str,
                     seed: int | None = None) -> torch.Tensor:
    """dropout(activation(x + bias), p), output in x's dtype. ``seed=None`` draws one from torch's CPU
    generator (follows ``torch.manual_seed``); p == 0 skips the mask."""
    p = float(p)
    seed_t = None
    if p > 0.0:
        seed_t = (torch.tensor(_check_seed(seed), dtype=torch.int64, device="cpu") if seed is not None
                  else torch.randint(0, _SEED_HIGH, (), dtype=torch.int64, device="cpu"))
    return _dropout_bias_act(x, bias, p, activation, seed_t)


def dropout_keep_mask(seed: int, shape: tuple[int, ...] | torch.Size, p: float,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The bool keep mask ``dropout_bias_act`` uses for ``seed``, an input of ``shape`` and ``p``."""
    ones = torch.ones(shape, dtype=torch.float32, device=device)
    return dropout_bias_act(ones, None, p, "none", seed) != 0
