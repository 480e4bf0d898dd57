"""Packed documents through a model: a batch's document ids, and the mask form each attention takes.

A :class:`DocumentMask` holds the checked ids; an attention that runs ``masked_attention`` asks it for a
:class:`BlockMask` classified from the ids (``document_block_mask``: no (L, L) tensor, and the CSR path
lists its pairs from the ids too), one that needs an element mask for the dense keep mask. Both are built
on first use and kept for every layer of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from blockzoo.ops.attention import cost
from blockzoo.ops.attention.analysis import outside_graphs
from blockzoo.ops.block_mask import BlockMask
from blockzoo.ops.document_blocks import document_block_mask
from blockzoo.ops.masks import _positions, document_mask, resolve_doc_ids


@dataclass(eq=False)
class DocumentMask:
    """The attention mask of a packed batch, kept as its checked document ids (B, L) (B = 1: shared).

    ``block_mask(causal, window)`` gives the block-sparse structure (built from the ids, cached);
    ``dense()`` the (B, 1, L, L) bool keep mask for attentions that need element masks (built on first
    use, cached). ``causal`` is the model's: the block mask always includes it. A model given one as
    ``doc_ids`` reuses it, so a batch's structures can be built once, before the step (as benchmarks do).
    """

    doc_ids: torch.Tensor
    causal: bool = True
    block_size: tuple[int, int] | None = None  # None: the tile ``tile_for`` picks for the device
    _blocks: dict = field(default_factory=dict, repr=False)
    _dense: torch.Tensor | None = field(default=None, repr=False)
    _positions: torch.Tensor | None = field(default=None, repr=False)

    @property
    def seq_len(self) -> int:
        return self.doc_ids.shape[1]

    @property
    def device(self) -> torch.device:
        return self.doc_ids.device

    @outside_graphs
    def block_mask(self, causal: bool = False, window: int | tuple[int, int] | None = None) -> BlockMask:
        """The BlockMask of the documents (cut by ``window``), causal when the mask or ``causal`` is."""
        causal = bool(causal or self.causal)
        key = (causal, window)
        got = self._blocks.get(key)
        if got is None:
            tile = self.block_size or tile_for(self.device)
            got = self._blocks[key] = document_block_mask(self.doc_ids, causal=causal, window=window,
                                                          block_size=tile)
        return got

    @property
    def positions(self) -> torch.Tensor:
        """(B, L) int64 position of each token inside its document (cached)."""
        if self._positions is None:
            self._positions = _positions(self.doc_ids)
        return self._positions

    def dense(self) -> torch.Tensor:
        """The (B, 1, L, L) bool keep mask (``document_mask``, causal when ``causal``)."""
        if self._dense is None:
            self._dense = document_mask(self.doc_ids, causal=self.causal)
        return self._dense


def packed_documents(doc_ids: torch.Tensor | None, cu_seqlens: torch.Tensor | None, seq_len: int,
                     causal: bool = True) -> tuple[DocumentMask, torch.Tensor] | None:
    """(:class:`DocumentMask`, in-document positions (B, L)) of a packed batch, its ids checked once; None
    when neither ``doc_ids`` nor ``cu_seqlens`` is given (B = 1 for ``cu_seqlens``). Nothing of size L x L
    is built here: each attention asks the mask for the form it takes."""
    ids = resolve_doc_ids(doc_ids, cu_seqlens, seq_len)
    if ids is None:
        return None
    mask = DocumentMask(ids, causal)
    return mask, mask.positions


def tile_for(device: torch.device) -> tuple[int, int]:
    """The tile a document BlockMask is built at on ``device``: the first GPU candidate of the cost
    model on CUDA, the Triton interpreter's tile elsewhere."""
    return cost.band_tiles(torch.device(device))[0]
