"""Triton ``fused_linear_cross_entropy``: cross_entropy(hidden @ weight.T, target) without the (N, V) logits.

Rows of ``hidden`` are taken in chunks of about ``CHUNK_BYTES / (V * 4)`` rows. Per chunk: the logits
(chunk, V) come from one torch GEMM (in hidden's dtype, fp32 accumulation, as the reference does);
a Triton kernel computes each row's logsumexp and loss and overwrites the logits in place with
d(loss)/d(logits) = (softmax - onehot) * scale; then grad_hidden[chunk] = dlogits @ W and
grad_weight += dlogitsᵀ @ hidden[chunk] (torch GEMMs; grad_weight accumulates in float32 over the chunks
and is rounded to weight's dtype once, at the end, as PyTorch's is).

- 'mean' and 'sum': the gradients are computed in the forward (Liger-style) with scale = 1; backward
  multiplies them by grad_output (/ num_valid for 'mean') and only then rounds grad_weight. Half-precision
  dlogits so stay in range: at 1 / num_valid they would underflow in fp16 where PyTorch's, scaled by a
  GradScaler's grad_output first, do not.
- 'none': grad_weight needs each row's grad_output inside the sum over rows, so nothing is stored; backward
  runs the same chunk loop again with scale = grad_output[row] (one more logits GEMM per chunk).

Ignored rows (target == ignore_index) have loss 0 and gradient 0 and do not count in the mean. With every row
ignored, 'mean' gives NaN (0 / 0, as ``F.cross_entropy``) and zero gradients. A target outside [0, V) that is
not ignore_index raises ValueError before any Triton kernel runs; the check reads one bool back from the
device (one sync per call), which we accept for a loss computed once per step: a device-side assert would
poison the CUDA context instead of raising. Registered through ``registration.fast_op``: the
``blockzoo::fused_linear_cross_entropy`` custom op (and its backward op for 'none') and an eager fast path.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from blockzoo.ops.triton import launch
from blockzoo.ops.triton.grads import mm_fp32
from blockzoo.ops.triton.registration import fast_op

CHUNK_BYTES = 1 << 30  # budget for chunk_rows * V * 4 bytes (fp32-sized logits)
_BLOCK_V = 64 if launch.interpreting() else 4096
_NUM_WARPS = 4 if launch.interpreting() else 8


@triton.jit
def _ce_kernel(LOGITS, stride_l, TARGET, LOSS, SCALE, stride_s, V, ignore_index,
               WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    """One row: loss = logsumexp(logits) - logits[target]; optionally logits <- (softmax - onehot) * scale."""
    row = tl.program_id(0)
    ptr = LOGITS + row.to(tl.int64) * stride_l
    target = tl.load(TARGET + row)
    valid = target != ignore_index
    cols = tl.arange(0, BLOCK_V)
    m = -float("inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        x = tl.load(ptr + start + cols, mask=start + cols < V, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    x_t = tl.load(ptr + tl.where(valid, target, 0)).to(tl.float32)
    tl.store(LOSS + row, tl.where(valid, lse - x_t, 0.0))
    if WRITE_GRAD:
        g = tl.where(valid, tl.load(SCALE + row * stride_s).to(tl.float32), 0.0)
        for start in range(0, V, BLOCK_V):
            c = start + cols
            x = tl.load(ptr + c, mask=c < V, other=0.0).to(tl.float32)
            grad = (tl.exp(x - lse) - tl.where(c == target, 1.0, 0.0)) * g
            tl.store(ptr + c, grad.to(LOGITS.dtype.element_ty), mask=c < V)


def _check_targets(target: torch.Tensor, vocab: int, ignore_index: int) -> None:
    bad = (target != ignore_index) & ((target < 0) | (target >= vocab))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(f"target {value} is out of range [0, {vocab}) and is not ignore_index={ignore_index}")


def _chunk_rows(n: int, vocab: int) -> int:
    chunks = max(1, triton.cdiv(n * vocab * 4, CHUNK_BYTES))
    return max(1, triton.cdiv(n, chunks))


def _chunked(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore_index: int,
             scale: torch.Tensor | None, need_dh: bool, need_dw: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-row loss fp32, grad_hidden, grad_weight in float32); gradients (scaled by ``scale``, one value or
    one per row) only when ``scale`` is given, else empty tensors."""
    n, vocab = hidden.shape[0], weight.shape[0]
    target = target.contiguous()
    loss = torch.empty(n, dtype=torch.float32, device=hidden.device)
    dh = torch.empty(hidden.shape if need_dh else (0,), dtype=hidden.dtype, device=hidden.device)
    dw = torch.zeros(weight.shape if need_dw else (0,), dtype=torch.float32, device=weight.device)
    if n == 0:
        return loss, dh, dw
    rows = _chunk_rows(n, vocab)
    buf = torch.empty((min(rows, n), vocab), dtype=hidden.dtype, device=hidden.device)
    write_grad = scale is not None
    per_row = write_grad and scale.numel() > 1
    for start in range(0, n, rows):
        end = min(start + rows, n)
        h = hidden[start:end]
        logits = torch.mm(h, weight.t(), out=buf[: end - start])
        row_scale = scale[start:end] if per_row else (scale if write_grad else loss)
        launch.launch(_ce_kernel, (end - start,), logits, logits.stride(0), target[start:end], loss[start:end],
                      row_scale, int(per_row), vocab, ignore_index, WRITE_GRAD=write_grad, BLOCK_V=_BLOCK_V,
                      num_warps=_NUM_WARPS)
        if need_dh:
            torch.mm(logits, weight, out=dh[start:end])
        if need_dw:
            dw += mm_fp32(logits.t(), h)
    return loss, dh, dw


def _forward(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str,
             need_dh: bool, need_dw: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_hidden, grad_weight (float32), scale): for 'mean' and 'sum' the gradients of the summed
    loss, which times ``scale`` (1 / max(num_valid, 1) or 1) are the loss's; empty for 'none' or when not
    asked for."""
    _check_targets(target, weight.shape[0], ignore_index)
    valid = (target != ignore_index).sum()
    need_dh, need_dw = need_dh and reduction != "none", need_dw and reduction != "none"
    ones = torch.ones((), dtype=torch.float32, device=hidden.device)
    rows_loss, dh, dw = _chunked(hidden, weight, target, ignore_index, ones if need_dh or need_dw else None,
                                 need_dh, need_dw)
    if reduction == "none":
        return rows_loss, dh, dw, ones
    total = rows_loss.sum()
    if reduction == "sum":
        return total, dh, dw, ones
    return total / valid, dh, dw, 1.0 / valid.clamp_min(1).float()


def _forward_fake(hidden, weight, target, ignore_index, reduction, need_dh, need_dw):
    stored = reduction != "none"
    loss = hidden.new_empty(hidden.shape[0] if reduction == "none" else (), dtype=torch.float32)
    dh = hidden.new_empty(hidden.shape if need_dh and stored else (0,))
    dw = weight.new_empty(weight.shape if need_dw and stored else (0,), dtype=torch.float32)
    return loss, dh, dw, hidden.new_empty((), dtype=torch.float32)


def _backward(grad_loss: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
              ignore_index: int, need_dh: bool, need_dw: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients for reduction='none': the chunk loop again with each row scaled by its grad_loss."""
    _, dh, dw = _chunked(hidden, weight, target, ignore_index, grad_loss.float().contiguous(), need_dh, need_dw)
    return dh, dw.to(weight.dtype)


def _backward_fake(grad_loss, hidden, weight, target, ignore_index, need_dh, need_dw):
    return hidden.new_empty(hidden.shape if need_dh else (0,)), weight.new_empty(weight.shape if need_dw else (0,))


def _save(ctx, inputs: tuple, output: tuple) -> None:
    hidden, weight, target, ignore_index, reduction, _, _ = inputs
    _, dh, dw, scale = output
    ctx.mark_non_differentiable(dh, dw, scale)
    ctx.reduction, ctx.ignore_index, ctx.weight_dtype = reduction, ignore_index, weight.dtype
    if reduction == "none":
        ctx.save_for_backward(hidden, weight, target)
    else:
        ctx.save_for_backward(dh, dw, scale)


def _grads(ctx, grad_loss: torch.Tensor, backward) -> tuple:
    need_dh, need_dw = ctx.needs_input_grad[:2]
    if ctx.reduction == "none":
        hidden, weight, target = ctx.saved_tensors
        dh, dw = backward(grad_loss, hidden, weight, target, ctx.ignore_index, need_dh, need_dw)
    else:
        dh, dw, scale = ctx.saved_tensors
        scale = grad_loss * scale
        dh = dh * scale if need_dh else None
        dw = (dw * scale).to(ctx.weight_dtype) if need_dw else None
    return (dh if need_dh else None), (dw if need_dw else None), None, None, None, None, None


_flce = fast_op("fused_linear_cross_entropy", _forward, _backward, save=_save, grads=_grads, differentiable=(0, 1),
                fake=_forward_fake, backward_fake=_backward_fake)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                               ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, target) in float32; ``weight`` must share hidden's dtype."""
    if weight.dtype != hidden.dtype:
        raise TypeError(f"weight has dtype {weight.dtype}; expected hidden's dtype {hidden.dtype}")
    if weight.shape[0] == 0:
        raise ValueError("weight has 0 rows: cross-entropy needs a vocabulary of at least one class")
    grad = torch.is_grad_enabled()
    return _flce(hidden, weight, target, ignore_index, reduction, grad and hidden.requires_grad,
                 grad and weight.requires_grad)
