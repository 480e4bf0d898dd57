"""Triton RMSNorm, forward and backward, on the normalization kernels of ``layer_norm.py`` (``RMS=True``).

Forward saves only rstd (fp32, (M,)); dw is reduced in two stages (per-program partials, then a sum).
"""
from typing import Optional

import torch
from torch.library import triton_op

from blockzoo.ops.triton.layer_norm import norm_backward, norm_forward


@triton_op("blockzoo::rms_norm", mutates_args=())
def _rms_norm(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, _, rstd = norm_forward(x, n, weight, None, eps, rms=True)
    return y, rstd


@triton_op("blockzoo::rms_norm_backward", mutates_args=())
def _rms_norm_backward(dy: torch.Tensor, x: torch.Tensor, n: int, weight: Optional[torch.Tensor],
                       rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dx, dw, _ = norm_backward(dy, x, n, weight, None, rstd, rstd, rms=True)
    return dx, dw


def _setup_context(ctx, inputs, output) -> None:
    x, n, weight, _ = inputs
    ctx.n = n
    ctx.save_for_backward(x, weight, output[1])


def _backward(ctx, dy: torch.Tensor, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = _rms_norm_backward(dy, x, ctx.n, weight, rstd)
    return dx, None, dw if weight is not None else None, None


_rms_norm.register_autograd(_backward, setup_context=_setup_context)


def rms_norm(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` over its last ``n`` elements (x viewed as (M, n)), optional weight of n elements."""
    return _rms_norm(x, n, weight, eps)[0]
