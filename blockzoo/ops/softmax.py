"""``softmax``: (log-)softmax with an optional bool/additive mask or causal pattern."""
from __future__ import annotations

import torch

from blockzoo.ops import autocast, backend, torch_ref
from blockzoo.ops.checks import FLOATS, check_broadcastable, check_mask_dtype, check_tensor


def softmax(x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None, causal: bool = False,
            log: bool = False) -> torch.Tensor:
    """Softmax (or log-softmax with ``log=True``) over ``dim``.

    ``mask``: bool (True = keep) or additive float, broadcastable to ``x``; ``causal`` keeps
    entries (i, j) with j <= i over the last two dims. Fully masked rows give zeros.
    """
    x, mask = autocast.cast("softmax", x, mask)
    check_tensor("x", x, dtypes=FLOATS, min_dim=1)
    nd = x.dim()
    if not -nd <= dim < nd:
        raise ValueError(f"dim {dim} out of range for a {nd}-D input")
    if causal and (nd < 2 or dim % nd != nd - 1):
        raise ValueError("causal softmax needs at least 2 dims and dim=-1")
    if mask is not None:
        check_mask_dtype("mask", mask, x)
        check_broadcastable("mask", mask, x.shape)
    last = dim % nd == nd - 1
    path = backend.choose("softmax", x, unsupported=None if last else "softmax over a dim other than the last")
    if path == "triton":
        from blockzoo.ops.triton.softmax import softmax as fast

        out = backend.run_fast("softmax", x, fast, x, mask=mask, causal=causal, log=log)
        if out is not None:
            return out
    return torch_ref.softmax(x, dim, mask, causal, log)
