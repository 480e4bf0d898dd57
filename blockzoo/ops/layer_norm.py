"""``layer_norm`` and ``rms_norm``: normalization over the trailing ``normalized_shape`` dims."""
from __future__ import annotations

import math

import torch

from blockzoo.ops import backend, torch_ref
from blockzoo.ops.checks import FLOATS, check_same_device, check_tensor


def _check_norm_args(x: torch.Tensor, normalized_shape: int | tuple[int, ...],
                     **params: torch.Tensor | None) -> tuple[int, ...]:
    check_tensor("x", x, dtypes=FLOATS, min_dim=1)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    shape = tuple(shape)
    if tuple(x.shape[len(x.shape) - len(shape):]) != shape or len(shape) > x.dim():
        raise ValueError(f"normalized_shape {shape} does not match the trailing dims of x {tuple(x.shape)}")
    for name, p in params.items():
        if p is not None:
            check_tensor(name, p, dtypes=FLOATS)
            if tuple(p.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(p.shape)}; expected {shape}")
    check_same_device(x=x, **params)
    return shape


def layer_norm(x: torch.Tensor, normalized_shape: int | tuple[int, ...], weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm with optional weight and bias (``torch.nn.functional.layer_norm`` semantics)."""
    shape = _check_norm_args(x, normalized_shape, weight=weight, bias=bias)
    if backend.choose("layer_norm", x) == "triton":
        from blockzoo.ops.triton.layer_norm import layer_norm as fast

        n = math.prod(shape)
        out = backend.run_fast("layer_norm", x, fast, x, n, weight, bias, eps)
        if out is not None:
            return out
    return torch_ref.layer_norm(x, shape, weight, bias, eps)


def rms_norm(x: torch.Tensor, normalized_shape: int | tuple[int, ...], weight: torch.Tensor | None = None,
             eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm with an optional weight (``torch.nn.functional.rms_norm`` semantics)."""
    shape = _check_norm_args(x, normalized_shape, weight=weight)
    if backend.choose("rms_norm", x) == "triton":
        from blockzoo.ops.triton.rms_norm import rms_norm as fast

        n = math.prod(shape)
        out = backend.run_fast("rms_norm", x, fast, x, n, weight, eps)
        if out is not None:
            return out
    return torch_ref.rms_norm(x, shape, weight, eps)
