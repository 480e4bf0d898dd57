"""``fused_linear_cross_entropy``: LM-head projection + cross-entropy without the full logits."""
from __future__ import annotations

import torch

from blockzoo.ops import backend, torch_ref
from blockzoo.ops.checks import FLOATS, check_same_device, check_targets, check_tensor

REDUCTIONS = ("mean", "sum", "none")


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                               ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, target), chunked on the fast path so logits never fill memory.

    hidden (N, D), weight (V, D), target (N,) int64. A target outside [0, V) that is not ``ignore_index``
    raises ValueError on every path.
    """
    check_tensor("hidden", hidden, dtypes=FLOATS, dim=2)
    check_tensor("weight", weight, dtypes=FLOATS, dim=2)
    check_tensor("target", target, dtypes=(torch.int64, torch.int32), dim=1)
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight {tuple(weight.shape)} and hidden {tuple(hidden.shape)} disagree on D")
    if target.shape[0] != hidden.shape[0]:
        raise ValueError(f"target has {target.shape[0]} rows; hidden has {hidden.shape[0]}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_same_device(hidden=hidden, weight=weight, target=target)
    target = target.long()
    if backend.choose("fused_linear_cross_entropy", hidden) == "triton":
        from blockzoo.ops.triton.cross_entropy import fused_linear_cross_entropy as fast

        out = backend.run_fast("fused_linear_cross_entropy", hidden, fast, hidden, weight, target,
                               ignore_index, reduction)
        if out is not None:
            return out
    if not torch.compiler.is_compiling():  # the Triton path checks inside its op
        check_targets(target, weight.shape[0], ignore_index)
    return torch_ref.fused_linear_cross_entropy(hidden, weight, target, ignore_index, reduction)
