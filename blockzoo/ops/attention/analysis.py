"""Mask analysis: what a mask looks like, cached per mask object, and the structures each path builds from it.

``mask_stats`` reads a tensor mask once (one host sync): kept elements, empty rows, whether it holds
additive values and, at each candidate tile of the block-sparse kernel, how many tiles hold a kept
element and how many are full. A BlockMask or SparseLayout is described from its own counts.
Statistics are cached per mask object (weakly: a dropped mask frees its entry) and tensor version;
they also hold what is built for the mask on first use (block masks per tile, the CSR mask, the
dense path's tensor) and its plans. Building those syncs the host: ``outside_graphs`` keeps such
work out of torch.compile graphs.
"""
from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from blockzoo.ops import masks
from blockzoo.ops.block_mask import BlockMask, band_row_counts, block_mask
from blockzoo.ops.document_blocks import document_bounds, document_layout
from blockzoo.ops.sparse.csr_mask import CsrMask
from blockzoo.ops.sparse.layout import SparseLayout

ANALYSIS_GRID = 32  # tile counts are taken on a 32 x 32 grid and summed up to each candidate tile
_PAD = 128  # masks are padded to a multiple of the largest candidate tile


def outside_graphs(fn):
    """``fn`` kept out of torch.compile graphs, called directly in eager mode (the disable wrapper
    costs microseconds a call, as much as a small attention kernel)."""
    disabled = torch.compiler.disable(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return call


@dataclass(eq=False)
class MaskStats:
    """What analysis learned about one mask (with ``causal`` applied) and the structures built for it."""

    batch: int
    heads: int
    q_len: int
    kv_len: int
    causal: bool
    nnz: int
    empty_rows: int | None  # (group, row) pairs with nothing kept; None when unknown
    additive: bool  # float mask with values other than 0 / -inf: only dense can apply it
    tiles: dict[tuple[int, int], tuple[int, int]]  # tile -> (tiles visited, full tiles) over all groups
    kind: str = "tensor"  # or "block" (a BlockMask: block_sparse or dense), "band" (a band BlockMask:
    #                        block_sparse, csr from its band, or dense), "documents" (a BlockMask of packed
    #                        documents: block_sparse, csr from its ids, or dense), "layout" (a SparseLayout)
    blocks: dict[tuple[int, int], BlockMask] = field(default_factory=dict)  # built on first use (tensors)
    csr: CsrMask | None = None  # built on first use (tensors)
    dense_keep: torch.Tensor | None = None  # a structured mask expanded for the dense path (causal included)
    dense_fix: dict = field(default_factory=dict)  # (causal, dtype) -> (SDPA-ready mask, empty rows or None)
    plans: dict[tuple, Any] = field(default_factory=dict)  # shape key -> its plan.AttentionPlan (cached by plan.py)

    @property
    def groups(self) -> int:
        return self.batch * self.heads

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.groups * self.q_len * self.kv_len)


class _WeakIdCache:
    """A dict per live object, keyed by identity and dropped when the object dies (tensors hash by id
    anyway; a lookup is one dict get and one weakref call, where WeakIdKeyDictionary builds a
    reference object per lookup)."""

    def __init__(self) -> None:
        self._data: dict[int, tuple[weakref.ref, dict]] = {}

    def of(self, obj: Any) -> dict:
        """``obj``'s dict (created empty on first use)."""
        key = id(obj)
        got = self._data.get(key)
        if got is not None and got[0]() is obj:
            return got[1]
        ref = weakref.ref(obj, lambda r: self._data.pop(key) if self._data.get(key, (None,))[0] is r else None)
        self._data[key] = (ref, {})
        return self._data[key][1]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


_stats_cache = _WeakIdCache()
_counters = {"analyses": 0, "plans": 0, "hits": 0}


def count(event: str) -> None:
    """Count one ``event`` ('analyses', 'plans' or 'hits') for :func:`cache_info`."""
    _counters[event] += 1


def cache_info() -> dict[str, int]:
    """Counts of mask analyses (statistics computed for a mask object; a host sync for a tensor mask),
    plans computed and plan-cache hits, for tests and tuning."""
    return dict(_counters)


def clear_cache() -> None:
    """Forget every cached analysis and plan."""
    _stats_cache.clear()
    for k in _counters:
        _counters[k] = 0


# ----------------------------------------------------------------------------------------- analysis
def _keep4(mask: torch.Tensor, L: int, S: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(bool keep mask as (B_m, H_m, L, S), 0-dim bool 'has additive values' or None)."""
    m = masks.as_4d(mask)
    m = m.expand(m.shape[0], m.shape[1], L, S)
    if m.dtype == torch.bool:
        return m, None
    neginf = torch.isneginf(m)
    return ~neginf, ((m != 0) & ~neginf).any()


def _analyze(mask: torch.Tensor, L: int, S: int, causal: bool, tiles: Sequence[tuple[int, int]]) -> MaskStats:
    count("analyses")
    keep, additive = _keep4(mask, L, S)
    Bm, Hm = keep.shape[:2]
    G = Bm * Hm
    Lp, Sp = -(-L // _PAD) * _PAD, -(-S // _PAD) * _PAD
    if (Lp, Sp) == (L, S):
        padded = keep.reshape(G, L, S).contiguous()
    else:
        padded = torch.zeros(G, Lp, Sp, dtype=torch.bool, device=mask.device)
        padded[:, :L, :S] = keep.reshape(G, L, S)
    if causal:
        padded = torch.tril(padded)  # out of place: padded may be the caller's mask
    # one pass over the mask: counts per 32 columns, then rows and 32 x 32 tiles from those
    part = padded.view(torch.uint8).view(G, Lp, Sp // ANALYSIS_GRID, ANALYSIS_GRID).sum(-1, dtype=torch.int32)
    row_counts = part[:, :L].sum(-1)
    vals = [row_counts.sum(), (row_counts == 0).sum()]
    fine = part.view(G, Lp // ANALYSIS_GRID, ANALYSIS_GRID, Sp // ANALYSIS_GRID).sum(2)
    for bm, bn in tiles:
        gm, gn = bm // ANALYSIS_GRID, bn // ANALYSIS_GRID
        c = fine.view(G, Lp // bm, gm, Sp // bn, gn).sum((2, 4))
        vals += [(c > 0).sum(), (c == bm * bn).sum()]
    if additive is not None:
        vals.append(additive)
    got = torch.stack([v.to(torch.int64) for v in vals]).tolist()  # the one host sync
    tile_counts = {t: (got[2 + 2 * i], got[3 + 2 * i]) for i, t in enumerate(tiles)}
    return MaskStats(Bm, Hm, L, S, causal, got[0], got[1], bool(got[-1]) if additive is not None else False,
                     tile_counts)


def stats_of_block_mask(bm: BlockMask) -> MaskStats:
    """The statistics of a BlockMask, from its own counts (uncached: :func:`mask_stats` caches them)."""
    # statistics never hold the object they describe: the cache is keyed on it weakly
    tile = (bm.block_m, bm.block_n)
    empty, kind = None, "block"
    if bm.band is not None:  # rows whose band misses [0, S): known without a dense mask
        empty, kind = int((band_row_counts(bm.q_len, bm.kv_len, *bm.band) == 0).sum()), "band"
    elif bm.doc_ids is not None:  # rows whose document run is cut away by the window
        first, last = document_bounds(bm.doc_ids, bm.causal, bm.doc_band)
        empty, kind = int((last < first).sum()), "documents"
    return MaskStats(bm.batch, bm.heads, bm.q_len, bm.kv_len, bm.causal, bm.nnz, empty, False,
                     {tile: (bm.full_tiles + bm.partial_tiles, bm.full_tiles)}, kind=kind)


def _stats_of_csr(p: CsrMask) -> MaskStats:
    return MaskStats(p.batch, p.heads, p.q_len, p.kv_len, False, p.nnz, None, False, {}, kind="layout")


def mask_stats(mask: Any, L: int, S: int, causal: bool, tiles: Sequence[tuple[int, int]], batch: int = 1,
               heads: int = 1) -> MaskStats:
    """The cached statistics of ``mask`` (a tensor, BlockMask or SparseLayout), analyzing it on a miss.

    ``batch`` / ``heads`` say how a per-batch SparseLayout's patterns map to (b, h) pairs.
    """
    if isinstance(mask, BlockMask):
        key: tuple = ("block",)
    elif isinstance(mask, SparseLayout):
        key = ("csr", batch, heads)
    else:
        key = (mask._version, causal, L, S, tuple(tiles))
    per_mask = _stats_cache.of(mask)
    st = per_mask.get(key)
    if st is None:
        if isinstance(mask, BlockMask):
            count("analyses")
            st = stats_of_block_mask(mask)
        elif isinstance(mask, SparseLayout):
            count("analyses")
            st = _stats_of_csr(CsrMask.of_layout(mask, batch, heads))
        else:
            per_mask.clear()  # an older version of this tensor is stale
            st = _analyze(mask, L, S, causal, tiles)
        per_mask[key] = st
    return st


# --------------------------------------------------------------------------- structures per path
def block_mask_for(stats: MaskStats, mask: Any, tile: tuple[int, int]) -> BlockMask:
    """The BlockMask of ``mask`` at ``tile`` (built once per statistics object; a BlockMask is itself)."""
    if isinstance(mask, BlockMask):
        return mask
    bm = stats.blocks.get(tile)
    if bm is None:
        if isinstance(mask, torch.Tensor):
            bm = block_mask(_keep4(mask, stats.q_len, stats.kv_len)[0], causal=stats.causal, block_size=tile)
        else:
            bm = block_mask(keep_with_causal(mask, stats), block_size=tile)
        stats.blocks[tile] = bm
    return bm


def csr_mask_for(stats: MaskStats, mask: Any) -> CsrMask:
    """The CsrMask of ``mask`` (causal applied; built once per statistics object)."""
    if isinstance(mask, SparseLayout):
        return CsrMask(mask, stats.batch, stats.heads)
    if stats.csr is None:
        if isinstance(mask, BlockMask) and mask.band is not None:  # O(nnz): no dense mask
            stats.csr = CsrMask(band_layout(mask.q_len, mask.kv_len, *mask.band, device=mask.device), 1, 1)
        elif isinstance(mask, BlockMask) and mask.doc_ids is not None:  # O(nnz): listed from the ids
            stats.csr = CsrMask(document_layout(mask.doc_ids, mask.causal, mask.doc_band), mask.batch, 1)
        else:
            stats.csr = CsrMask.from_mask(keep_with_causal(mask, stats))
    return stats.csr


def band_layout(q_len: int, kv_len: int, lo: int, hi: int, device: torch.device | str | None = None) -> SparseLayout:
    """The (L, S) SparseLayout of lo <= j - i <= hi, built from the band (memory O(nnz), one sync)."""
    i = torch.arange(q_len, dtype=torch.int64, device=device)
    start = (i + lo).clamp_min(0)
    counts = band_row_counts(q_len, kv_len, lo, hi, device)
    ro = torch.zeros(q_len + 1, dtype=torch.int64, device=device)
    ro[1:] = counts.cumsum(0)
    rows = torch.repeat_interleave(i, counts)
    ci = start[rows] + torch.arange(rows.numel(), dtype=torch.int64, device=device) - ro[rows]
    return SparseLayout.from_csr(ro, ci, (q_len, kv_len))


def keep_with_causal(mask: Any, stats: MaskStats) -> torch.Tensor:
    """Bool (B_m, H_m, L, S) keep mask with causal applied."""
    if isinstance(mask, BlockMask):
        return mask.to_dense()
    if isinstance(mask, SparseLayout):
        return mask.to_dense().reshape(stats.batch, stats.heads, stats.q_len, stats.kv_len)
    keep, _ = _keep4(mask, stats.q_len, stats.kv_len)
    return torch.tril(keep) if stats.causal else keep
