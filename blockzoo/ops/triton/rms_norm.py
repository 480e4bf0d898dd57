"""Triton RMSNorm, forward and backward, on the normalization kernels of ``layer_norm.py`` (``RMS=True``).

Forward saves only rstd (fp32, (M,)); dw is reduced in two stages (per-program partials, then a sum).
Registered through ``registration.fast_op``: the ``blockzoo::rms_norm`` triton_op and an eager fast path.
"""
from typing import Optional

import torch

from blockzoo.ops.triton.layer_norm import norm_backward, norm_forward
from blockzoo.ops.triton.registration import fast_op


def _forward(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    y, _, rstd = norm_forward(x, n, weight, None, eps, rms=True)
    return y, rstd


def _backward(dy: torch.Tensor, x: torch.Tensor, n: int, weight: Optional[torch.Tensor],
              rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dx, dw, _ = norm_backward(dy, x, n, weight, None, rstd, rstd, rms=True)
    return dx, dw


def _save(ctx, inputs: tuple, output: tuple) -> None:
    x, n, weight, _ = inputs
    ctx.n = n
    ctx.save_for_backward(x, weight, output[1])


def _grads(ctx, dy: torch.Tensor, backward) -> tuple:
    x, weight, rstd = ctx.saved_tensors
    dx, dw = backward(dy, x, ctx.n, weight, rstd)
    return dx, None, dw if weight is not None else None, None


_rms_norm = fast_op("rms_norm", _forward, _backward, save=_save, grads=_grads, differentiable=(0, 2))


def rms_norm(x: torch.Tensor, n: int, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` over its last ``n`` elements (x viewed as (M, n)), optional weight of n elements."""
    return _rms_norm(x, n, weight, eps)
