"""Pure-PyTorch sparse ops: the path taken without the compiled extension (``BLOCKZOO_NO_EXT=1``).

Gather/scatter over the layout's stored entries; correct for every layout and dtype, differentiable by
autograd, and O(nnz * K) in memory. fp16/bf16 inputs are computed in fp32, like the kernels.
"""
from __future__ import annotations

import math

import torch

from blockzoo.ops.sparse.layout import SparseLayout, csr_entries


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _grouped(t: torch.Tensor, layout: SparseLayout, tail: int) -> torch.Tensor:
    """``t`` (batch..., *tail dims) as (G, Z, *tail dims) in the accumulation dtype."""
    batch = math.prod(t.shape[:t.dim() - tail])
    G = layout.num_patterns
    return t.to(_acc(t.dtype)).reshape(G, batch // G, *t.shape[t.dim() - tail:])


def _rows_of(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (G, P) entry index broadcast to ``like`` (G, Z, P, K) for gather/scatter along dim 2."""
    return index[:, None, :, None].expand(like.shape[0], like.shape[1], index.shape[1], like.shape[3])


def sddmm(a: torch.Tensor, b: torch.Tensor, layout: SparseLayout, scale: float = 1.0) -> torch.Tensor:
    """``scale * a @ b^T`` at the layout's entries: (..., P); padding entries are 0."""
    rows, cols, valid = layout.entries()
    A, B = _grouped(a, layout, 2), _grouped(b, layout, 2)
    prod = A.gather(2, _rows_of(rows, A)) * B.gather(2, _rows_of(cols, B))
    out = (prod.sum(-1) * scale).masked_fill(~valid[:, None, :], 0)
    return out.to(a.dtype).reshape(*a.shape[:-2], layout.max_nnz)


def sparse_softmax(values: torch.Tensor, layout: SparseLayout) -> torch.Tensor:
    """Softmax over each CSR row's values; empty rows and rows of -inf give zeros, a NaN or +inf value a NaN
    row (as a dense softmax over the row's entries); padding is 0."""
    rows, _, valid = layout.entries()
    x = _grouped(values, layout, 1).masked_fill(~valid[:, None, :], float("-inf"))
    G, Z, _ = x.shape
    idx = rows[:, None, :].expand_as(x)
    M = layout.shape[-2]
    row_max = torch.full((G, Z, M), float("-inf"), dtype=x.dtype, device=x.device)
    row_max = row_max.scatter_reduce(-1, idx, x.detach(), "amax").gather(-1, idx)  # shift only: no gradient
    row_max = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)  # a row of -inf: e == 0
    e = torch.exp(x - row_max)
    total = torch.zeros((G, Z, M), dtype=x.dtype, device=x.device).scatter_add(-1, idx, e).gather(-1, idx)
    out = e / torch.where(total == 0, torch.ones_like(total), total)  # NaN or +inf: total is NaN
    out = out.masked_fill(~valid[:, None, :], 0)  # padding (read as row 0) stays 0 when row 0 is NaN
    return out.to(values.dtype).reshape(values.shape)


def spmm(values: torch.Tensor, layout: SparseLayout, b: torch.Tensor) -> torch.Tensor:
    """``S @ b`` for S holding ``values`` (..., P) at the layout's entries: (..., M, K)."""
    rows, cols, valid = layout.entries()
    V = _grouped(values, layout, 1).masked_fill(~valid[:, None, :], 0)
    B = _grouped(b, layout, 2)
    contrib = V[..., None] * B.gather(2, _rows_of(cols, B))
    G, Z, _, K = contrib.shape
    out = torch.zeros((G, Z, layout.shape[-2], K), dtype=contrib.dtype, device=contrib.device)
    out = out.scatter_add(2, _rows_of(rows, contrib), contrib)
    return out.to(b.dtype).reshape(*values.shape[:-1], layout.shape[-2], K)


def csr_transpose(row_offsets: torch.Tensor, col_indices: torch.Tensor,
                  n_cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transposed pattern (row_offsets_t, col_indices_t, perm), int32, same conventions as the C++ op:
    a stable sort of the entries by column, padding last and mapped to itself."""
    rows, cols, valid = csr_entries(row_offsets, col_indices)
    key = torch.where(valid, cols, torch.full_like(cols, n_cols))
    perm = torch.sort(key, dim=-1, stable=True).indices
    cols_t = rows.gather(-1, perm)
    counts = torch.zeros(key.shape[0], n_cols + 1, dtype=torch.long, device=key.device)
    counts.scatter_add_(-1, key, torch.ones_like(key))
    ro_t = torch.zeros_like(counts)
    ro_t[:, 1:] = counts[:, :n_cols].cumsum(-1)
    shape = row_offsets.shape[:-1]
    return (ro_t.to(torch.int32).reshape(*shape, n_cols + 1), cols_t.to(torch.int32).reshape(col_indices.shape),
            perm.to(torch.int32).reshape(col_indices.shape))
