"""Masked attention that picks its own path (flash, block-sparse, CSR or dense) for the mask.

The face: ``masked_attention`` runs it, ``explain`` says which path a call takes and why,
``analyze`` plans a mask without running it (an :class:`AttentionPlan`), ``band_mask`` builds a
sliding-window BlockMask at the tile the cost model rates cheapest, ``PATHS`` names the paths
``path=`` can force. Inside: ``dispatch`` (the call), ``plan`` (plans), ``analysis`` (mask
statistics and their caches), ``documents`` (packed documents' masks), ``cost`` (the cost model and its tables, ``costs/*.json``).
"""
from blockzoo.ops.attention.dispatch import PATHS, explain, masked_attention
from blockzoo.ops.attention.plan import AttentionPlan, analyze, band_mask

__all__ = ["masked_attention", "explain", "analyze", "AttentionPlan", "band_mask", "PATHS"]
