"""``softmax``: (log-)softmax with an optional bool/additive mask or causal pattern."""
from __future__ import annotations

import torch

from blockzoo.ops import backend, torch_ref
from blockzoo.ops.checks import FLOATS, check_broadcastable, check_mask_dtype, check_tensor


def softmax(x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None, causal: bool = False,
            log: bool = False) -> torch.Tensor:
    """Softmax (or log-softmax with ``log=True``) over ``dim``, for any shape ``torch.softmax`` takes
    (0-d and empty tensors included).

    ``mask``: bool (True = keep) or additive float, broadcastable to ``x``; ``causal`` keeps
    entries (i, j) with j <= i over the last two dims. Fully masked rows give zeros; a NaN (or a
    +inf) in a row gives a NaN row, as in ``torch.softmax``.
    """
    check_tensor("x", x, dtypes=FLOATS)
    nd = max(x.dim(), 1)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if not -nd <= dim < nd:
        raise ValueError(f"dim {dim!r} out of range for a {x.dim()}-D input; expected an int in [{-nd}, {nd - 1}]")
    if causal and (x.dim() < 2 or dim % nd != nd - 1):
        raise ValueError("causal softmax needs at least 2 dims and dim=-1")
    if mask is not None:
        check_tensor("mask", mask)
        check_mask_dtype("mask", mask, x)
        check_broadcastable("mask", mask, x.shape)
    if x.dim() == 0:  # a single element: a row of one
        return softmax(x.reshape(1), 0, None if mask is None else mask.reshape(1), False, log).reshape(())
    last = dim % nd == nd - 1
    other_dim = None if last or backend.requested() == "triton" else "softmax over a dim other than the last"
    path = backend.choose("softmax", x, unsupported=other_dim)
    if path == "triton":
        out = _fast(x, dim, mask, causal, log, last)
        if out is not None:
            return out
    return torch_ref.softmax(x, dim, mask, causal, log)


def _fast(x: torch.Tensor, dim: int, mask: torch.Tensor | None, causal: bool, log: bool,
          last: bool) -> torch.Tensor | None:
    """The Triton kernel over the last dim; another ``dim`` (only when Triton is forced) is moved last."""
    from blockzoo.ops.triton.softmax import softmax as fast

    if not last:
        x = x.movedim(dim, -1)
        if mask is not None:
            mask = mask.reshape((1,) * (x.dim() - mask.dim()) + tuple(mask.shape)).movedim(dim, -1)
    out = backend.run_fast("softmax", x, fast, x, mask=mask, causal=causal, log=log)
    return out if out is None or last else out.movedim(-1, dim)
