"""Public sparse ops over a :class:`SparseLayout`, with fake and autograd rules for ``torch.ops.blockzoo.csr_*``.

``sddmm(a, b, layout, scale)`` -> values, ``sparse_softmax(values, layout)`` -> values and
``spmm(values, layout, b)`` -> dense run the compiled kernels (``blockzoo._C``: CPU always, CUDA when built
with it) and fall back to :mod:`blockzoo.ops.sparse.fallback` with one warning when the extension is missing,
skipped (``BLOCKZOO_NO_EXT=1``) or has no kernel for the device. ``BLOCKZOO_BACKEND=torch`` (or
``blockzoo.ops.force("torch")``) forces the fallback. Inputs are checked before any kernel runs: a shape,
dtype or device mismatch raises ``ValueError`` naming both sides.

The raw ops ``torch.ops.blockzoo.csr_*`` validate their index values by default (``check=True``: a
ValueError naming the first bad offset, column, row order or permutation entry; ATen ops over the indices
and one read back to the host); these wrappers pass ``check=False``, their SparseLayout having been
validated once when it was built. ``sddmm_coo(a, b, row, col)`` takes COO indices instead of a layout: it
checks them, converts them to a layout (``SparseLayout.from_coo``) and runs ``sddmm``.

Backward passes: for ``S = scale * (A B^T)|layout``: dA = scale * dS B (spmm with the layout) and
dB = scale * dS^T A (spmm with the cached transpose, values read through its permutation); for
``O = S V``: dS = (dO V^T)|layout (sddmm) and dV = S^T dO.
"""
from __future__ import annotations

import os

import torch

from blockzoo.ops import backend
from blockzoo.ops.checks import FLOATS
from blockzoo.ops.sparse import fallback
from blockzoo.ops.sparse.layout import SparseLayout, row_order, set_transpose_kernel


def _load_extension() -> tuple[bool, str]:
    if os.environ.get("BLOCKZOO_NO_EXT", "0") == "1":
        return False, "BLOCKZOO_NO_EXT=1 skips the compiled extension blockzoo._C"
    try:
        import blockzoo._C  # noqa: F401
    except Exception as e:  # a missing or broken build falls back, it never kills the import
        return False, f"the compiled extension blockzoo._C is unavailable ({type(e).__name__}: {e})"
    return True, "blockzoo._C"


EXT_AVAILABLE, EXT_REASON = _load_extension()
_KERNEL_DEVICES = frozenset(
    dev for dev in ("cpu", "cuda")
    if EXT_AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key("blockzoo::csr_spmm", dev.upper()))


def use_extension(op: str, device: torch.device) -> bool:
    """Whether ``op`` runs the compiled kernel on ``device``; records the path and warns once if not."""
    if backend.requested() != "torch":
        if not EXT_AVAILABLE:
            reason = EXT_REASON
        elif device.type not in _KERNEL_DEVICES:
            reason = f"blockzoo._C was built without {device.type} kernels"
        else:
            backend.record_path(op, "extension")
            return True
        backend.warn_once("sparse", reason)
    backend.record_path(op, "torch")
    return False


# ------------------------------------------------------------------------------------------ checks
def _check_float(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATS:
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of {', '.join(map(str, FLOATS))}")
    return t


def _check_layout(layout: object) -> SparseLayout:
    if not isinstance(layout, SparseLayout):
        raise TypeError(f"layout must be a SparseLayout, got {type(layout).__name__}")
    return layout


def _check_pair(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise ValueError(f"{name} is {t.dtype} but {ref_name} is {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def _check_batch(name: str, t: torch.Tensor, tail: int, layout: SparseLayout) -> None:
    """``t``'s device and, for a per-batch layout, its leading batch dim against the layout."""
    if t.device != layout.device:
        raise ValueError(f"{name} is on {t.device} but {layout} is on {layout.device}")
    if t.dim() < tail:
        raise ValueError(f"{name} must have at least {tail} dims, got shape {tuple(t.shape)}")
    if layout.per_batch and (t.dim() == tail or t.shape[0] != layout.shape[0]):
        raise ValueError(f"{name} of shape {tuple(t.shape)} needs a leading batch dim of {layout.shape[0]} "
                         f"for {layout}")


def _check_rows(name: str, t: torch.Tensor, rows: int, which: str, layout: SparseLayout) -> None:
    if t.shape[-2] != rows:
        raise ValueError(f"{name} of shape {tuple(t.shape)} has {t.shape[-2]} rows but {layout} has {rows} {which}")


def _check_values(values: torch.Tensor, layout: SparseLayout) -> None:
    _check_batch("values", values, 1, layout)
    if values.shape[-1] != layout.max_nnz:
        raise ValueError(f"values of shape {tuple(values.shape)} must end in {layout.max_nnz} (the stored "
                         f"entries of {layout})")


# --------------------------------------------------------------------------------------- public ops
def sddmm(a: torch.Tensor, b: torch.Tensor, layout: SparseLayout, scale: float = 1.0) -> torch.Tensor:
    """``scale * a @ b^T`` at the layout's nonzeros: a (..., M, K), b (..., N, K) -> values (..., P)."""
    _check_layout(layout)
    _check_float("a", a)
    _check_float("b", b)
    _check_pair("b", b, "a", a)
    _check_batch("a", a, 2, layout)
    _check_rows("a", a, layout.shape[-2], "rows", layout)
    _check_rows("b", b, layout.shape[-1], "columns", layout)
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must share batch dims and K")
    if not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    if not use_extension("sddmm", a.device):
        return fallback.sddmm(a, b, layout, float(scale))
    t = layout.transpose() if b.requires_grad and torch.is_grad_enabled() else (None,) * 4
    return torch.ops.blockzoo.csr_sddmm(layout.row_offsets, layout.col_indices, layout.row_order, a, b,
                                        float(scale), *t, check=False)


def sddmm_coo(a: torch.Tensor, b: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
               scale: float = 1.0) -> torch.Tensor:
    """``scale * (a @ b^T)[..., row[k], col[k]]`` for each COO entry k: a (..., M, K), b (..., N, K) ->
    (..., nnz) in the order of the entries given.

    The COO indices are converted to a CSR :class:`SparseLayout` once per call (repeated entries computed
    once) and run through :func:`sddmm`, so the compiled kernels and their backward apply; to reuse the
    conversion, build ``SparseLayout.from_coo(row, col, (M, N))`` once and gather ``sddmm``'s values at
    its index. ``row`` / ``col`` outside [0, M) / [0, N) raise ValueError naming them.
    """
    _check_float("a", a)
    _check_float("b", b)
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have at least 2 dims")
    layout, index = SparseLayout.from_coo(row, col, (a.shape[-2], b.shape[-2]))
    layout = layout.to(a.device)
    values = sddmm(a, b, layout, scale)
    return values.index_select(-1, index.to(a.device))


def sparse_softmax(values: torch.Tensor, layout: SparseLayout) -> torch.Tensor:
    """Softmax over each CSR row of ``values`` (..., P); empty rows give nothing, padding stays 0."""
    _check_layout(layout)
    _check_float("values", values)
    _check_values(values, layout)
    if not use_extension("sparse_softmax", values.device):
        return fallback.sparse_softmax(values, layout)
    return torch.ops.blockzoo.csr_softmax(layout.row_offsets, layout.row_order, values, check=False)


def spmm(values: torch.Tensor, layout: SparseLayout, b: torch.Tensor) -> torch.Tensor:
    """``S @ b`` for S the layout holding ``values`` (..., P): b (..., N, K) -> (..., M, K)."""
    _check_layout(layout)
    _check_float("values", values)
    _check_float("b", b)
    _check_pair("b", b, "values", values)
    _check_values(values, layout)
    _check_batch("b", b, 2, layout)
    _check_rows("b", b, layout.shape[-1], "columns", layout)
    if values.shape[:-1] != b.shape[:-2]:
        raise ValueError(f"values {tuple(values.shape)} and b {tuple(b.shape)} must share batch dims")
    if not use_extension("spmm", b.device):
        return fallback.spmm(values, layout, b)
    t = layout.transpose() if b.requires_grad and torch.is_grad_enabled() else (None,) * 4
    return torch.ops.blockzoo.csr_spmm(layout.row_offsets, layout.col_indices, layout.row_order, values, b,
                                       None, *t, check=False)


def csr_transpose(row_offsets: torch.Tensor, col_indices: torch.Tensor,
                  n_cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transposed pattern (row_offsets_t, col_indices_t, perm): what SparseLayout.transpose runs and caches."""
    if use_extension("csr_transpose", row_offsets.device):
        return torch.ops.blockzoo.csr_transpose(row_offsets, col_indices, n_cols)
    return fallback.csr_transpose(row_offsets, col_indices, n_cols)


set_transpose_kernel(csr_transpose)


# ------------------------------------------------------------------------- fake and autograd rules
def _transpose_of(row_offsets: torch.Tensor, col_indices: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, ...]:
    """(row_offsets_t, col_indices_t, perm, row_order_t) for a backward called without a cached transpose."""
    ro_t, ci_t, perm = torch.ops.blockzoo.csr_transpose(row_offsets, col_indices, n_cols)
    return ro_t, ci_t, perm, row_order(ro_t)


def _expand_index(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A layout index (P,) or (G, P) broadcast over ``like``'s batch dims (G, ..., P)."""
    if index.dim() == 2:
        index = index.reshape(index.shape[0], *([1] * (like.dim() - 2)), index.shape[1])
    return index.expand(like.shape).long()


def _sddmm_setup(ctx, inputs, output) -> None:
    ro, ci, order, a, b, scale, *transpose, check = inputs
    ctx.save_for_backward(ro, ci, order, a, b, *transpose)
    ctx.scale, ctx.check = scale, check


def _sddmm_backward(ctx, grad: torch.Tensor):
    ro, ci, order, a, b, t_ro, t_ci, t_perm, t_order = ctx.saved_tensors
    grad = grad * ctx.scale if ctx.scale != 1.0 else grad
    da = db = None
    if ctx.needs_input_grad[3]:
        da = torch.ops.blockzoo.csr_spmm(ro, ci, order, grad, b, check=ctx.check)
    if ctx.needs_input_grad[4]:
        if t_ro is None:
            t_ro, t_ci, t_perm, t_order = _transpose_of(ro, ci, b.shape[-2])
        db = torch.ops.blockzoo.csr_spmm(t_ro, t_ci, t_order, grad, a, t_perm, check=ctx.check)
    return None, None, None, da, db, None, None, None, None, None, None


def _spmm_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:-1])
    ctx.check = inputs[-1]


def _spmm_backward(ctx, grad: torch.Tensor):
    ro, ci, order, values, b, perm, t_ro, t_ci, t_perm, t_order = ctx.saved_tensors
    dv = db = None
    if ctx.needs_input_grad[3]:
        dv = torch.ops.blockzoo.csr_sddmm(ro, ci, order, grad, b, 1.0, check=ctx.check)
        if perm is not None:  # entry j was read from values[perm[j]]
            dv = torch.zeros_like(values).scatter_add(-1, _expand_index(perm, values), dv)
    if ctx.needs_input_grad[4]:
        if t_ro is None:
            t_ro, t_ci, t_perm, t_order = _transpose_of(ro, ci, b.shape[-2])
        read = t_perm if perm is None else perm.gather(-1, t_perm.long()).to(torch.int32)
        db = torch.ops.blockzoo.csr_spmm(t_ro, t_ci, t_order, values, grad, read, check=ctx.check)
    return None, None, None, dv, db, None, None, None, None, None, None


def _softmax_setup(ctx, inputs, output) -> None:
    ro, order, _, check = inputs
    ctx.save_for_backward(ro, order, output)
    ctx.check = check


def _softmax_backward(ctx, grad: torch.Tensor):
    ro, order, out = ctx.saved_tensors
    return None, None, torch.ops.blockzoo.csr_softmax_backward(ro, order, out, grad, check=ctx.check), None


def _register() -> None:
    """Fake (shape) rules and autograd for the C++ ops; run once when the extension loaded."""

    @torch.library.register_fake("blockzoo::csr_sddmm")
    def _(row_offsets, col_indices, row_order, a, b, scale, t_row_offsets=None, t_col_indices=None, t_perm=None,
          t_row_order=None, check=True):
        return a.new_empty((*a.shape[:-2], col_indices.shape[-1]))

    @torch.library.register_fake("blockzoo::csr_spmm")
    def _(row_offsets, col_indices, row_order, values, b, perm=None, t_row_offsets=None, t_col_indices=None,
          t_perm=None, t_row_order=None, check=True):
        return b.new_empty((*values.shape[:-1], row_offsets.shape[-1] - 1, b.shape[-1]))

    @torch.library.register_fake("blockzoo::csr_softmax")
    def _(row_offsets, row_order, values, check=True):
        return torch.empty_like(values, memory_format=torch.contiguous_format)

    @torch.library.register_fake("blockzoo::csr_softmax_backward")
    def _(row_offsets, row_order, out, grad_out, check=True):
        return torch.empty_like(out, memory_format=torch.contiguous_format)

    @torch.library.register_fake("blockzoo::csr_transpose")
    def _(row_offsets, col_indices, n_cols):
        return (row_offsets.new_empty((*row_offsets.shape[:-1], n_cols + 1)),
                torch.empty_like(col_indices, memory_format=torch.contiguous_format),
                torch.empty_like(col_indices, memory_format=torch.contiguous_format))

    torch.library.register_autograd("blockzoo::csr_sddmm", _sddmm_backward, setup_context=_sddmm_setup)
    torch.library.register_autograd("blockzoo::csr_spmm", _spmm_backward, setup_context=_spmm_setup)
    torch.library.register_autograd("blockzoo::csr_softmax", _softmax_backward, setup_context=_softmax_setup)


if EXT_AVAILABLE:
    _register()
