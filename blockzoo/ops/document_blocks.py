"""Packed-document masks built from the document ids alone: no (L, L) tensor.

In a packed row the keys query i keeps form one contiguous run: its own document (ids nondecreasing),
cut to j <= i when causal and to lo <= j - i <= hi by a window. ``document_bounds`` gives that run per
row; from it ``document_block_mask`` classifies the tiles of the block-sparse kernels (empty: the query
and key blocks share no kept pair; full: every pair kept; partial: the rest, the only ones given
bitmasks) and ``document_layout`` lists the kept pairs for the CSR path. Memory follows the kept pairs
and the tile grid, never L². (``ops.attention.documents.DocumentMask`` carries them through a model.)
"""
from __future__ import annotations

import torch

from blockzoo.ops.block_mask import DEFAULT_TILE, TILE_CHUNK, BlockMask, _assemble, pack_bits
from blockzoo.ops.masks import document_ids, document_starts, window_bounds
from blockzoo.ops.sparse.layout import SparseLayout


def document_bounds(doc_ids: torch.Tensor, causal: bool = True,
                    window: int | tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last) kept key of each query, int64 (B, L) each (last < first: nothing kept), for checked
    nondecreasing ``doc_ids`` (B, L): its document, cut by ``causal`` and ``window`` as in ``document_mask``."""
    B, L = doc_ids.shape
    band = window_bounds(window)
    lo, hi = (-L, L) if band is None else band
    if causal:
        hi = min(hi, 0)
    idx, start, first = document_starts(doc_ids)
    end = torch.ones(B, L, dtype=torch.bool, device=doc_ids.device)
    end[:, :-1] = start[:, 1:]
    last = torch.where(end, idx, torch.full_like(idx, L - 1)).flip(1).cummin(dim=1).values.flip(1)
    return torch.maximum(first, idx + lo), torch.minimum(last, idx + hi)


def document_block_mask(doc_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None, *,
                        seq_len: int | None = None, causal: bool = True,
                        window: int | tuple[int, int] | None = None,
                        block_size: int | tuple[int, int] = DEFAULT_TILE,
                        device: torch.device | str | None = None) -> BlockMask:
    """The :class:`BlockMask` of ``document_mask(doc_ids / cu_seqlens, causal=causal, window=window)``,
    classified from the document boundaries (no (L, L) tensor; only partial tiles get bitmasks).

    ``block_size`` = (block_m, block_n) as in ``block_mask``. The result has one group per row of ids
    (``batch`` = B, or 1 for ``cu_seqlens``), ``causal`` as given, and keeps the ids (``doc_ids``) and the
    window as (lo, hi) (``doc_band``) so the CSR path can list its pairs without a dense mask.
    """
    if isinstance(block_size, int):
        block_size = (block_size, block_size)
    bm, bn = block_size
    for name, b in (("block_m", bm), ("block_n", bn)):
        if not isinstance(b, int) or b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {b}")
    ids = document_ids(doc_ids, cu_seqlens, seq_len)
    ids = ids if device is None else ids.to(device)
    B, L = ids.shape
    dev = ids.device
    first, last = document_bounds(ids, causal, window)
    NM, NN = -(-L // bm), -(-L // bn)
    counts = torch.zeros(B, NM, NN, dtype=torch.int64, device=dev)
    if L:
        # each (row, key block) its kept run touches: that block's count grows by the run's overlap
        c_lo, c_hi = first.clamp(0, L - 1) // bn, last.clamp(0, L - 1) // bn
        span = torch.where(last >= first, c_hi - c_lo + 1, torch.zeros_like(c_lo))  # (B, L)
        flat = torch.repeat_interleave(torch.arange(B * L, device=dev), span.flatten())
        offs = torch.arange(flat.numel(), device=dev) - torch.repeat_interleave(
            span.flatten().cumsum(0) - span.flatten(), span.flatten())
        c = c_lo.flatten()[flat] + offs
        f, l_ = first.flatten()[flat], last.flatten()[flat]
        overlap = torch.minimum(l_, (c + 1) * bn - 1) - torch.maximum(f, c * bn) + 1
        b, i = flat // L, flat % L
        counts.view(-1).index_put_(((b * NM + i // bm) * NN + c,), overlap, accumulate=True)
    full = counts == bm * bn
    part = (counts > 0) & ~full
    pidx = part.nonzero()
    bits = _partial_bits(pidx, first, last, L, bm, bn)
    return _assemble(full, part, pidx.shape[0], bits, B, 1, L, L, bm, bn, causal, counts.sum(), dev,
                     doc_ids=ids, doc_band=window_bounds(window))


def _partial_bits(pidx: torch.Tensor, first: torch.Tensor, last: torch.Tensor, L: int, bm: int,
                  bn: int) -> torch.Tensor:
    """Bitmasks of the partial tiles ``pidx`` (P, 3) = (group, row block, key block), from the runs."""
    P = pidx.shape[0]
    out = torch.empty(P, bm, max(1, bn // 32), dtype=torch.int32, device=first.device)
    cols = torch.arange(bn, device=first.device)
    rows = torch.arange(bm, device=first.device)
    step = max(1, TILE_CHUNK // (bm * bn))
    for s in range(0, P, step):
        g, r, c = pidx[s:s + step].unbind(1)
        i = r[:, None] * bm + rows  # (p, bm)
        inside = i < L
        i = i.clamp_max(L - 1)
        f, l_ = first[g[:, None], i], last[g[:, None], i]
        j = (c * bn)[:, None, None] + cols  # (p, 1, bn)
        keep = (j >= f[..., None]) & (j <= l_[..., None]) & inside[..., None]
        out[s:s + step] = pack_bits(keep)
    return out


def document_layout(doc_ids: torch.Tensor, causal: bool = True,
                    window: int | tuple[int, int] | None = None) -> SparseLayout:
    """The kept pairs of a packed batch as a SparseLayout ((L, L) for one row of ids, else per batch
    (B, L, L)), listed from the document runs: memory O(kept pairs)."""
    B, L = doc_ids.shape
    first, last = document_bounds(doc_ids, causal, window)
    counts = (last - first + 1).clamp_min(0)  # (B, L)
    ro = torch.zeros(B, L + 1, dtype=torch.int64, device=doc_ids.device)
    ro[:, 1:] = counts.cumsum(1)
    width = int(ro[:, -1].max()) if B else 0
    ci = torch.zeros(B, width, dtype=torch.int64, device=doc_ids.device)
    for b in range(B):
        n = int(ro[b, -1])
        rows = torch.repeat_interleave(torch.arange(L, device=doc_ids.device), counts[b])
        ci[b, :n] = first[b, rows] + torch.arange(n, device=doc_ids.device) - ro[b, rows]
    if B == 1:
        return SparseLayout.from_csr(ro[0], ci[0], (L, L))
    return SparseLayout.from_csr(ro, ci, (B, L, L))
