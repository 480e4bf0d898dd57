"""Triton RMSNorm, forward and backward, on the normalization kernels of ``layer_norm.py`` (``RMS=True``).

Forward saves only rstd (fp32, (M,)); dw is reduced in two stages (per-program partials, then a sum).
"""
from typing import Optional

import torch
from torch.library import triton_op

from blockzoo.ops.triton import launch
from blockzoo.ops.triton.layer_norm import norm_backward, norm_forward


def _forward(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, _, rstd = norm_forward(x, n, weight, None, eps, rms=True)
    return y, rstd


def _backward(dy: torch.Tensor, x: torch.Tensor, n: int, weight: Optional[torch.Tensor],
              rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dx, dw, _ = norm_backward(dy, x, n, weight, None, rstd, rstd, rms=True)
    return dx, dw


_rms_norm = triton_op("blockzoo::rms_norm", mutates_args=())(_forward)
_rms_norm_backward = triton_op("blockzoo::rms_norm_backward", mutates_args=())(_backward)


def _save(ctx, x, n, weight, rstd) -> None:
    ctx.n = n
    ctx.save_for_backward(x, weight, rstd)


def _grads(ctx, dy: torch.Tensor, backward) -> tuple:
    x, weight, rstd = ctx.saved_tensors
    dx, dw = backward(dy, x, ctx.n, weight, rstd)
    return dx, None, dw if weight is not None else None, None


_rms_norm.register_autograd(lambda ctx, dy, _drstd: _grads(ctx, dy, _rms_norm_backward),
                            setup_context=lambda ctx, inputs, output: _save(ctx, *inputs[:3], output[1]))


class _EagerRMSNorm(torch.autograd.Function):
    """The same kernels and gradients without the custom-op dispatch, for plain tensors in eager mode."""

    @staticmethod
    def forward(ctx, x, n, weight, eps):
        y, rstd = _forward(x, n, weight, eps)
        _save(ctx, x, n, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        return _grads(ctx, dy, _backward)


def rms_norm(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` over its last ``n`` elements (x viewed as (M, n)), optional weight of n elements."""
    if launch.eager(x, weight):
        if not launch.needs_grad(x, weight):
            return _forward(x, n, weight, eps)[0]
        return _EagerRMSNorm.apply(x, n, weight, eps)
    return _rms_norm(x, n, weight, eps)[0]
