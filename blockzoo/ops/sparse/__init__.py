"""Sparse primitives on CSR layouts: ``sddmm``, ``sparse_softmax``, ``spmm`` over a :class:`SparseLayout`.

Sparse attention is ``spmm(sparse_softmax(sddmm(q, k, layout, scale), layout), layout, v)``.
"""
from blockzoo.ops.sparse.layout import CsrTranspose, SparseLayout
from blockzoo.ops.sparse.ops import sddmm, sddmm_coo, sparse_softmax, spmm

__all__ = ["SparseLayout", "CsrTranspose", "sddmm", "sddmm_coo", "sparse_softmax", "spmm"]
