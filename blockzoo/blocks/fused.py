"""Modules over the fused ops: ``FusedLinear`` (GEMM + bias + activation) and ``FusedDropoutBias``
(bias + activation + dropout), the counterparts of xFormers' Triton layers of the same names."""
from __future__ import annotations

import math

import torch
from torch import nn

from blockzoo import ops
from blockzoo.ops.activation import check_activation


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class FusedLinear(nn.Module):
    """``activation(x @ weight.T + bias)`` through ``blockzoo.ops.linear_act`` (one kernel where it pays).

    Parameters ``weight`` (out_features, in_features) and ``bias`` (out_features, or None), initialised as
    ``nn.Linear``'s. ``activation`` is a name of ``blockzoo.ops.torch_ref.ACTIVATIONS`` ("none": plain linear).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "none",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features = _positive("in_features", in_features)
        self.out_features = _positive("out_features", out_features)
        check_activation(activation)
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ±1/sqrt(in_features), weight and bias alike (``nn.Linear``'s distribution)."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features)."""
        return ops.linear_act(x, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation!r}")


class FusedDropoutBias(nn.Module):
    """``dropout(activation(x + bias), p)`` through ``blockzoo.ops.dropout_bias_act`` (dropout only in training).

    ``bias_shape``: the width of the learned ``bias`` (zeros at init), or None for no bias.
    """

    def __init__(self, p: float, bias_shape: int | None = None, activation: str = "none",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be a dropout probability in [0, 1), got {p!r}")
        check_activation(activation)
        self.p, self.activation = float(p), activation
        width = None if bias_shape is None else _positive("bias_shape", bias_shape)
        self.bias = None if width is None else nn.Parameter(torch.zeros(width, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., bias_shape) -> same shape."""
        return ops.dropout_bias_act(x, self.bias, self.p, self.activation, training=self.training)

    def extra_repr(self) -> str:
        width = None if self.bias is None else self.bias.shape[0]
        return f"p={self.p}, bias_shape={width}, activation={self.activation!r}"
