"""Functional ops: each has a PyTorch path and, where available, a fast path chosen at run time.

``blockzoo.ops.force("torch")`` or ``BLOCKZOO_BACKEND=torch`` forces the PyTorch path.
"""
from blockzoo.ops.activation import dropout_bias_act, linear_act
from blockzoo.ops.attention import AttentionPlan, analyze, band_mask, explain, masked_attention
from blockzoo.ops.block_mask import BlockMask, block_mask
from blockzoo.ops.attention.documents import DocumentMask, packed_documents
from blockzoo.ops.document_blocks import document_block_mask
from blockzoo.ops.backend import (BackendUnavailableError, BlockzooFallbackWarning, BlockzooWarning, force,
                                  last_path, set_backend)
from blockzoo.ops.cross_entropy import fused_linear_cross_entropy
from blockzoo.ops.layer_norm import layer_norm, rms_norm
from blockzoo.ops.masks import (apply_keep, as_4d, causal_keep, doc_ids_from_cu_seqlens,
                                document_mask, document_positions, keep_from_key_padding, position_keep,
                                repeat_kv)
from blockzoo.ops.masks_2d import (PATTERNS_2D, axial_h_keep, axial_v_keep, block_layout, dilated_2d_keep,
                                   gaussian_2d_bias, local_2d_keep, pattern_2d, pattern_2d_block_mask, swin_keep)
from blockzoo.ops.softmax import softmax
from blockzoo.ops.sparse import SparseLayout, sddmm, sddmm_coo, sparse_softmax, spmm

__all__ = ["softmax", "layer_norm", "rms_norm", "dropout_bias_act", "linear_act", "fused_linear_cross_entropy",
           "masked_attention", "analyze", "explain", "AttentionPlan", "band_mask", "block_mask", "BlockMask",
           "DocumentMask", "document_block_mask", "packed_documents",
           "apply_keep", "as_4d", "causal_keep", "document_mask", "document_positions",
           "doc_ids_from_cu_seqlens", "keep_from_key_padding", "position_keep", "repeat_kv", "PATTERNS_2D",
           "pattern_2d",
           "pattern_2d_block_mask", "axial_h_keep", "axial_v_keep", "local_2d_keep", "gaussian_2d_bias", "swin_keep",
           "dilated_2d_keep", "block_layout", "sddmm", "sddmm_coo", "sparse_softmax",
           "spmm", "SparseLayout", "force", "set_backend", "last_path", "BlockzooWarning", "BlockzooFallbackWarning",
           "BackendUnavailableError"]
