"""CSR sparsity layouts for the sparse ops (``sddmm``, ``sparse_softmax``, ``spmm``).

A :class:`SparseLayout` is built once (``from_mask``, ``from_csr`` or ``from_coo``), validated once, and then reused by
every call; its transpose (needed by the backward passes) is computed on first use and cached, by the
function :mod:`blockzoo.ops.sparse.ops` sets with :func:`set_transpose_kernel` (the compiled kernel or
PyTorch), so that imports run one way: ops -> fallback -> layout.

* **Shared layout**, ``shape == (M, N)``: ``row_offsets`` (M+1,), ``col_indices`` (nnz,), int32. One pattern
  for every batch matrix: values are ``(..., nnz)`` for any batch dims.
* **Per-batch layout**, ``shape == (B, M, N)``: ``row_offsets`` (B, M+1), each pattern's offsets starting at 0;
  ``col_indices`` (B, P) with ``P = max_nnz`` (pattern b's nnz_b entries first, then padding). Values are
  ``(B, ..., P)``: batch index b uses pattern b; padding entries are 0 in outputs and ignored in inputs.

``row_order`` lists each pattern's rows by decreasing length (stable); the CUDA kernels walk rows in that
order so that blocks with similar work run together and long rows start first.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

INT32_MAX = 2**31 - 1
TransposeKernel = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
_transpose_kernel: TransposeKernel | None = None


class CsrTranspose(NamedTuple):
    """The transposed pattern: entry k of the transpose is entry ``perm[..., k]`` of the original."""

    row_offsets: torch.Tensor
    col_indices: torch.Tensor
    perm: torch.Tensor
    row_order: torch.Tensor


def set_transpose_kernel(kernel: TransposeKernel) -> None:
    """Set what :meth:`SparseLayout.transpose` runs: (row_offsets, col_indices, n_cols) -> (row_offsets_t,
    col_indices_t, perm). Importing ``blockzoo.ops.sparse`` sets it to ``blockzoo.ops.sparse.ops.csr_transpose``."""
    global _transpose_kernel
    _transpose_kernel = kernel


def row_order(row_offsets: torch.Tensor) -> torch.Tensor:
    """Rows sorted by decreasing length (stable), int32, shaped like ``row_offsets`` minus one column."""
    lengths = row_offsets[..., 1:] - row_offsets[..., :-1]
    return torch.argsort(lengths, dim=-1, descending=True, stable=True).to(torch.int32)


def csr_entries(row_offsets: torch.Tensor, col_indices: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, cols, valid), each (G, P): the row and column (int64) of every stored entry and whether it
    is a real entry (False for per-batch padding, whose row and column are 0)."""
    ro = row_offsets.reshape(-1, row_offsets.shape[-1]).long()
    ci = col_indices.reshape(ro.shape[0], -1).long()
    pos = torch.arange(ci.shape[1], device=ci.device).expand_as(ci).contiguous()
    valid = pos < ro[:, -1:]
    rows = torch.searchsorted(ro[:, 1:].contiguous(), pos, right=True)
    zero = torch.zeros((), dtype=torch.long, device=ci.device)
    return torch.where(valid, rows, zero), torch.where(valid, ci, zero), valid


class SparseLayout:
    """A validated CSR pattern, shared by the batch (shape (M, N)) or one per batch element (shape (B, M, N))."""

    def __init__(self, row_offsets: torch.Tensor, col_indices: torch.Tensor, shape: tuple[int, ...],
                 nnz_per_pattern: list[int]) -> None:
        """Internal: use :meth:`from_mask` or :meth:`from_csr`, which validate their input."""
        self.row_offsets = row_offsets
        self.col_indices = col_indices
        self.shape = tuple(shape)
        self.row_order = row_order(row_offsets)
        self._nnz_per_pattern = nnz_per_pattern
        self._transpose: CsrTranspose | None = None
        self._entries: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------------------- builders
    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "SparseLayout":
        """Layout of the True entries of a bool mask (M, N) (shared) or (B, M, N) (one pattern per b)."""
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be bool (True = keep), got {mask.dtype}")
        if mask.dim() not in (2, 3):
            raise ValueError(f"mask must be (M, N) or (B, M, N), got shape {tuple(mask.shape)}")
        m = mask if mask.dim() == 3 else mask.unsqueeze(0)
        G, M, N = m.shape
        ro = torch.zeros(G, M + 1, dtype=torch.int64, device=m.device)
        ro[:, 1:] = m.sum(-1, dtype=torch.int64).cumsum(-1)
        nnz = ro[:, -1].tolist()
        P = max(nnz, default=0)
        _check_int32("a pattern's nnz", max(M, N, P))
        idx = m.nonzero()
        starts = torch.cumsum(ro[:, -1], 0) - ro[:, -1]
        pos = torch.arange(idx.shape[0], device=m.device) - starts[idx[:, 0]]
        ci = torch.zeros(G, P, dtype=torch.int32, device=m.device)
        ci[idx[:, 0], pos] = idx[:, 2].to(torch.int32)
        ro = ro.to(torch.int32)
        if mask.dim() == 2:
            ro, ci = ro[0], ci[0]
        return cls(ro, ci, tuple(mask.shape), nnz)

    @classmethod
    def from_csr(cls, row_offsets: torch.Tensor, col_indices: torch.Tensor,
                 shape: tuple[int, int] | tuple[int, int, int]) -> "SparseLayout":
        """Layout from CSR arrays (int32, or int64 within int32 range), validated.

        Shared: ``row_offsets`` (M+1,), ``col_indices`` (nnz,), ``shape`` (M, N). Per-batch: ``row_offsets``
        (B, M+1) starting at 0 in every row, ``col_indices`` (B, P) with ``row_offsets[b, M] <= P``,
        ``shape`` (B, M, N). Column indices must be in [0, N) and strictly increasing within each row.
        """
        shape = _check_shape(shape)
        for name, t in (("row_offsets", row_offsets), ("col_indices", col_indices)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"{name} must be int32 (or int64 within int32 range), got {t.dtype}")
        if row_offsets.device != col_indices.device:
            raise ValueError(f"row_offsets is on {row_offsets.device} but col_indices is on {col_indices.device}")
        per_batch = len(shape) == 3
        M, N = shape[-2:]
        want = (shape[0], M + 1) if per_batch else (M + 1,)
        if tuple(row_offsets.shape) != want:
            raise ValueError(f"row_offsets has shape {tuple(row_offsets.shape)}; a layout of shape {shape} "
                             f"needs {want}")
        if col_indices.dim() != len(want) or (per_batch and col_indices.shape[0] != shape[0]):
            raise ValueError(f"col_indices has shape {tuple(col_indices.shape)}; a layout of shape {shape} "
                             f"needs {'(B, P)' if per_batch else '(nnz,)'} with B = {shape[0] if per_batch else '-'}")
        ro = row_offsets.reshape(-1, M + 1).long()
        ci = col_indices.reshape(ro.shape[0], -1).long()
        _check_offsets(ro, ci.shape[1], per_batch)
        _check_columns(ro, ci, N)
        nnz = ro[:, -1].tolist()
        ro32, ci32 = row_offsets.to(torch.int32).contiguous(), col_indices.to(torch.int32).contiguous()
        return cls(ro32, ci32, shape, nnz)

    @classmethod
    def from_coo(cls, row: torch.Tensor, col: torch.Tensor, shape: tuple[int, int]
                 ) -> tuple["SparseLayout", torch.Tensor]:
        """Shared (M, N) layout of the COO entries ``(row[k], col[k])``, and ``index`` (nnz_coo,) int64 with
        entry k of the COO list at ``index[k]`` of the layout's values (repeated entries share one).

        ``row`` and ``col`` are 1-D integer tensors of one length, on one device, within [0, M) and [0, N);
        any order; a bad one raises naming it and its first bad position.
        """
        shape = _check_shape(shape)
        if len(shape) != 2:
            raise ValueError(f"a COO layout is shared: shape must be (M, N), got {shape!r}")
        M, N = shape
        for name, t in (("row", row), ("col", col)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer indices, got {t.dtype}")
            if t.dim() != 1:
                raise ValueError(f"{name} must be 1-D (one index per entry), got shape {tuple(t.shape)}")
        if row.shape != col.shape:
            raise ValueError(f"row has {row.shape[0]} entries but col has {col.shape[0]}")
        if row.device != col.device:
            raise ValueError(f"row is on {row.device} but col is on {col.device}")
        for name, t, size in (("row", row, M), ("col", col, N)):
            bad = (t < 0) | (t >= size)
            if bad.any():
                k = int(bad.nonzero()[0, 0])
                raise ValueError(f"{name}[{k}] = {int(t[k])} is outside [0, {size})")
        key = row.long() * N + col.long()
        unique, index = torch.unique(key, sorted=True, return_inverse=True)
        counts = torch.bincount(unique // max(N, 1), minlength=M) if M else unique.new_zeros(0)
        _check_int32("a pattern's nnz", unique.numel())
        ro = torch.zeros(M + 1, dtype=torch.int32, device=row.device)
        ro[1:] = counts.cumsum(0)
        ci = (unique % max(N, 1)).to(torch.int32)
        return cls(ro, ci, shape, [unique.numel()]), index

    # ------------------------------------------------------------------------------------- properties
    @property
    def per_batch(self) -> bool:
        """True for one pattern per batch element (shape (B, M, N))."""
        return len(self.shape) == 3

    @property
    def num_patterns(self) -> int:
        """G: 1 for a shared layout, B for a per-batch one."""
        return self.shape[0] if self.per_batch else 1

    @property
    def nnz(self) -> int:
        """Number of nonzeros (summed over the patterns of a per-batch layout)."""
        return sum(self._nnz_per_pattern)

    @property
    def nnz_per_pattern(self) -> list[int]:
        """Nonzeros of each pattern (one entry for a shared layout)."""
        return list(self._nnz_per_pattern)

    @property
    def max_nnz(self) -> int:
        """P: the size of the values' last dim (nnz for a shared layout, the padded size per batch)."""
        return self.col_indices.shape[-1]

    @property
    def density(self) -> float:
        """nnz / (number of entries of the dense shape)."""
        total = 1
        for s in self.shape:
            total *= s
        return self.nnz / total if total else 0.0

    @property
    def device(self) -> torch.device:
        return self.row_offsets.device

    def __repr__(self) -> str:
        return (f"SparseLayout(shape={self.shape}, nnz={self.nnz}, density={self.density:.4g}, "
                f"per_batch={self.per_batch}, device={self.device})")

    # ------------------------------------------------------------------------------------ derived data
    def transpose(self) -> CsrTranspose:
        """The transposed pattern (N rows), computed on first use and cached."""
        if self._transpose is None:
            ro_t, ci_t, perm = _transpose_kernel(self.row_offsets, self.col_indices, self.shape[-1])
            self._transpose = CsrTranspose(ro_t, ci_t, perm, row_order(ro_t))
        return self._transpose

    def entries(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, cols, valid), each (G, P), cached; see :func:`csr_entries`."""
        if self._entries is None:
            self._entries = csr_entries(self.row_offsets, self.col_indices)
        return self._entries

    def to_dense(self) -> torch.Tensor:
        """The bool mask of this layout, of shape ``self.shape``."""
        rows, cols, valid = self.entries()
        G = self.num_patterns
        dense = torch.zeros(G, *self.shape[-2:], dtype=torch.bool, device=self.device)
        g = torch.arange(G, device=self.device)[:, None].expand_as(rows)
        dense[g[valid], rows[valid], cols[valid]] = True
        return dense if self.per_batch else dense[0]

    def to(self, device: torch.device | str) -> "SparseLayout":
        """This layout on ``device`` (self when already there); cached derived data moves with it."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = SparseLayout(self.row_offsets.to(device), self.col_indices.to(device), self.shape,
                             self._nnz_per_pattern)
        if self._transpose is not None:
            moved._transpose = CsrTranspose(*(t.to(device) for t in self._transpose))
        return moved


def _check_int32(what: str, value: int) -> None:
    if value > INT32_MAX:
        raise ValueError(f"{what} {value} does not fit the int32 indices of a SparseLayout")


def _check_shape(shape: object) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) not in (2, 3):
        raise ValueError(f"shape must be (M, N) or (B, M, N), got {shape!r}")
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"shape must hold non-negative ints, got {shape!r}")
    _check_int32("shape entry", max(shape))
    return tuple(shape)


def _check_offsets(ro: torch.Tensor, P: int, per_batch: bool) -> None:
    """row_offsets (G, M+1) int64: start at 0, non-decreasing, end within (or, shared, at) P."""
    if (ro[:, 0] != 0).any():
        g = int((ro[:, 0] != 0).nonzero()[0, 0])
        raise ValueError(f"row_offsets of pattern {g} must start at 0, got {int(ro[g, 0])}")
    steps = ro[:, 1:] - ro[:, :-1]
    if (steps < 0).any():
        g, r = (int(v) for v in (steps < 0).nonzero()[0])
        raise ValueError(f"row_offsets must be non-decreasing: pattern {g} row {r} goes from {int(ro[g, r])} "
                         f"to {int(ro[g, r + 1])}")
    ends = ro[:, -1]
    if per_batch and (ends > P).any():
        g = int((ends > P).nonzero()[0, 0])
        raise ValueError(f"row_offsets of pattern {g} end at {int(ends[g])} but col_indices holds only {P} entries")
    if not per_batch and int(ends[0]) != P:
        raise ValueError(f"row_offsets end at {int(ends[0])} but col_indices has {P} entries")


def _check_columns(ro: torch.Tensor, ci: torch.Tensor, N: int) -> None:
    """Stored columns of real entries are in [0, N) and strictly increasing within each row."""
    rows, _, valid = csr_entries(ro, ci)
    bad = valid & ((ci < 0) | (ci >= N))
    if bad.any():
        g, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"col_indices[{g}, {j}] = {int(ci[g, j])} (row {int(rows[g, j])}) is outside [0, {N})")
    same_row = valid[:, 1:] & valid[:, :-1] & (rows[:, 1:] == rows[:, :-1])
    unsorted = same_row & (ci[:, 1:] <= ci[:, :-1])
    if unsorted.any():
        g, j = (int(v) for v in unsorted.nonzero()[0])
        raise ValueError(f"col_indices must be strictly increasing within each row: row {int(rows[g, j])} of "
                         f"pattern {g} has {int(ci[g, j])} then {int(ci[g, j + 1])}")
