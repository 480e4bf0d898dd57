"""``dropout_bias_act`` and ``linear_act``: fused bias + activation (+ dropout / + GEMM)."""
from __future__ import annotations

import torch

from blockzoo.ops import autocast, backend, torch_ref
from blockzoo.ops.checks import FLOATS, check_same_device, check_tensor
from blockzoo.suggest import close_matches


def check_activation(name: str) -> None:
    if name not in torch_ref.ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}{close_matches(name, list(torch_ref.ACTIVATIONS))} "
                         f"(expected one of {', '.join(torch_ref.ACTIVATIONS)})")


def dropout_bias_act(x: torch.Tensor, bias: torch.Tensor | None = None, p: float = 0.0,
                     activation: str = "gelu", training: bool = True, seed: int | None = None) -> torch.Tensor:
    """dropout(activation(x + bias), p). The fast path regenerates its mask from ``seed`` in backward."""
    x, bias = autocast.cast("dropout_bias_act", x, bias, activation=activation)
    check_tensor("x", x, dtypes=FLOATS, min_dim=1)
    check_activation(activation)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
    if bias is not None:
        check_tensor("bias", bias, dtypes=FLOATS, dim=1)
        if bias.shape[0] != x.shape[-1]:
            raise ValueError(f"bias has {bias.shape[0]} elements; expected x.shape[-1] = {x.shape[-1]}")
        check_same_device(x=x, bias=bias)
    p_eff = p if training else 0.0
    if backend.choose("dropout_bias_act", x) == "triton":
        from blockzoo.ops.triton.dropout_bias_act import dropout_bias_act as fast

        out = backend.run_fast("dropout_bias_act", x, fast, x, bias, p_eff, activation, seed)
        if out is not None:
            return out
    return torch_ref.dropout_bias_act(x, bias, p_eff, activation, training)


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str = "gelu") -> torch.Tensor:
    """activation(x @ weight.T + bias) with bias and activation fused into the GEMM epilogue."""
    x, weight, bias = autocast.cast("linear_act", x, weight, bias)
    check_tensor("x", x, dtypes=FLOATS, min_dim=1)
    check_tensor("weight", weight, dtypes=FLOATS, dim=2)
    check_activation(activation)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (out, {x.shape[-1]}) for x {tuple(x.shape)}")
    if bias is not None:
        check_tensor("bias", bias, dtypes=FLOATS, dim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} elements; expected {weight.shape[0]}")
    check_same_device(x=x, weight=weight, bias=bias)
    if backend.choose("linear_act", x) == "triton":
        from blockzoo.ops.triton.linear_act import linear_act as fast

        out = backend.run_fast("linear_act", x, fast, x, weight, bias, activation)
        if out is not None:
            return out
    return torch_ref.linear_act(x, weight, bias, activation)
