"""CSR masks: a :class:`SparseLayout` read as an attention mask over (batch, heads) groups, as the CSR
attention kernels take it (the per-pair lists of the layout and of its transpose)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from blockzoo.ops.sparse.layout import SparseLayout


@dataclass(eq=False)
class CsrMask:
    """A :class:`SparseLayout` read as an attention mask over (B_m, H_m, L, S): pattern g = b_m * H_m + h_m.

    What the CSR attention kernels read: ``row_offsets`` / ``col_indices`` / ``row_order`` of the
    layout and ``t_*`` of its (cached) transpose, keys as rows.
    """

    layout: SparseLayout
    batch: int
    heads: int

    @property
    def groups(self) -> int:
        return self.batch * self.heads

    @property
    def q_len(self) -> int:
        return self.layout.shape[-2]

    @property
    def kv_len(self) -> int:
        return self.layout.shape[-1]

    @property
    def nnz(self) -> int:
        return self.layout.nnz

    @property
    def device(self) -> torch.device:
        return self.layout.device

    @property
    def row_offsets(self) -> torch.Tensor:
        return self.layout.row_offsets

    @property
    def col_indices(self) -> torch.Tensor:
        return self.layout.col_indices

    @property
    def row_order(self) -> torch.Tensor:
        return self.layout.row_order

    @property
    def t_row_offsets(self) -> torch.Tensor:
        return self.layout.transpose().row_offsets

    @property
    def t_col_indices(self) -> torch.Tensor:
        return self.layout.transpose().col_indices

    @property
    def t_row_order(self) -> torch.Tensor:
        return self.layout.transpose().row_order

    def group_strides(self, batch: int, heads: int) -> tuple[int, int]:
        """(stride over batch, stride over heads) giving a (b, h) pair's pattern."""
        if self.batch not in (1, batch) or self.heads not in (1, heads):
            raise ValueError(f"CSR mask for (batch={self.batch}, heads={self.heads}) does not broadcast to "
                             f"(batch={batch}, heads={heads})")
        return (self.heads if self.batch > 1 else 0), (1 if self.heads > 1 else 0)

    @classmethod
    def from_mask(cls, keep: torch.Tensor) -> "CsrMask":
        """From a bool (B_m, H_m, L, S) keep mask (causal already applied)."""
        bm_, hm, L, S = keep.shape
        g = keep.reshape(bm_ * hm, L, S)
        return cls(SparseLayout.from_mask(g[0] if bm_ * hm == 1 else g), bm_, hm)

    @classmethod
    def of_layout(cls, layout: SparseLayout, batch: int, heads: int) -> "CsrMask":
        """A user's layout: shared (L, S), per batch element (B, L, S) or per (batch, head) (B * H, L, S)."""
        if not layout.per_batch:
            return cls(layout, 1, 1)
        g = layout.shape[0]
        if g == batch:
            return cls(layout, batch, 1)
        if g == batch * heads:
            return cls(layout, batch, heads)
        raise ValueError(f"a per-batch SparseLayout of shape {layout.shape} needs B={batch} or B*H={batch * heads} "
                         "patterns")
