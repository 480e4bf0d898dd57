"""Attention plans: what a mask looks like, what each path of ``masked_attention`` would cost, which runs.

``analyze(mask, ...)`` reads a mask once (one host sync): kept elements, empty rows and, at each
candidate tile size of the block-sparse kernel, how many tiles hold a kept element and how many
are full. The cost model (``attention_costs.COSTS``, per device kind) turns that into an estimated
time for every path and picks the cheapest, keeping dense unless a sparse path wins by the
table's margin. Statistics are cached per mask object (weakly: a dropped mask frees its entry)
and version, plans per shape, so a static mask is analyzed once and later calls cost no sync.
"""
from __future__ import annotations

import json
import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from blockzoo.ops.attention_costs import COSTS, INTERPRETER_TILE
from blockzoo.ops.block_mask import BlockMask, band_row_counts, block_mask
from blockzoo.ops.sparse.csr_mask import CsrMask
from blockzoo.ops.sparse.layout import SparseLayout

PATHS = ("flash", "block_sparse", "csr", "dense")
SPARSE_HEAD_DIMS = (16, 32, 64, 128)
COSTS_ENV = "BLOCKZOO_ATTENTION_COSTS"
ANALYSIS_GRID = 32  # tile counts are taken on a 32 x 32 grid and summed up to each candidate tile
_PAD = 128  # masks are padded to a multiple of the largest candidate tile


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
    #                        block_sparse, csr from its band, or dense), "layout" (a SparseLayout)
    blocks: dict[tuple[int, int], BlockMask] = field(default_factory=dict)  # built on first use (tensors)
    csr: CsrMask | None = None  # built on first use (tensors)
    dense_keep: torch.Tensor | None = None  # a structured mask expanded for the dense path (causal included)
    dense_fix: dict = field(default_factory=dict)  # (causal, dtype) -> (SDPA-ready mask, empty rows or None)
    plans: dict[tuple, "AttentionPlan"] = field(default_factory=dict)

    @property
    def groups(self) -> int:
        return self.batch * self.heads

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.groups * self.q_len * self.kv_len)


@dataclass(eq=False)
class AttentionPlan:
    """The path ``masked_attention`` takes for a mask and shape, why, and every path's estimated time."""

    path: str
    reason: str
    device: str
    shape: tuple[int, int, int, int, int]  # (B, H, L, S, D)
    kv_heads: int
    dtype: torch.dtype
    causal: bool
    training: bool
    density: float
    nnz: int
    empty_rows: int | None
    occupancy: dict[tuple[int, int], tuple[float, float]]  # tile -> (fraction visited, fraction full)
    estimates: dict[str, float]  # path -> ms (inf: cannot run here)
    tile: tuple[int, int] | None  # block-sparse tile, when that path can run
    stats: MaskStats | None = field(default=None, repr=False)

    def explain(self) -> str:
        """The plan as readable text."""
        B, H, L, S, D = self.shape
        lines = [f"masked_attention: path={self.path} on {self.device} "
                 f"(B={B}, H={H}, H_kv={self.kv_heads}, L={L}, S={S}, D={D}, {str(self.dtype).split('.')[-1]}, "
                 f"causal={self.causal}, {'forward+backward' if self.training else 'forward'})",
                 f"  why: {self.reason}"]
        if self.stats is not None:
            st = self.stats
            empty = "unknown" if self.empty_rows is None else str(self.empty_rows)
            lines.append(f"  mask: {st.batch} x {st.heads} group(s), density {100 * self.density:.3g}% "
                         f"({self.nnz} kept), empty rows {empty}"
                         + (", additive values" if st.additive else ""))
            occ = ", ".join(f"{bm}x{bn}: {100 * v:.3g}% visited / {100 * f:.3g}% full"
                            for (bm, bn), (v, f) in self.occupancy.items())
            if occ:
                lines.append(f"  tiles: {occ}")
        est = []
        for p in PATHS:
            ms = self.estimates.get(p, math.inf)
            txt = "cannot run" if math.isinf(ms) else f"{ms:.4g} ms"
            if p == "block_sparse" and self.tile is not None and not math.isinf(ms):
                txt += f" (tile {self.tile[0]}x{self.tile[1]})"
            est.append(f"{p} {txt}" + (" <- chosen" if p == self.path else ""))
        lines.append("  estimated: " + "; ".join(est))
        return "\n".join(lines)


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
_costs_loaded: dict[str, dict] = {}
# id(cost table) -> (table, its block-sparse tiles); tables are replaced, never edited in place
_tiles_of: dict[int, tuple[dict, tuple[tuple[int, int], ...]]] = {}


def cache_info() -> dict[str, int]:
    """Counts of mask analyses (statistics computed for a mask object; a host sync for a tensor mask),
    plans computed and plan-cache hits, for tests and tuning."""
    return dict(_counters)


def clear_cache() -> None:
    """Forget every cached analysis and plan."""
    _stats_cache.clear()
    for k in _counters:
        _counters[k] = 0


def cost_table(device: str) -> dict:
    """The cost constants of ``device`` ('cuda' or 'cpu'); ``BLOCKZOO_ATTENTION_COSTS`` names a JSON override."""
    path = os.environ.get(COSTS_ENV)
    if path:
        if path not in _costs_loaded:
            with open(path) as f:
                _costs_loaded[path] = json.load(f)
        table = _costs_loaded[path].get(device)
        if table is not None:
            return table
    if device not in COSTS:
        raise ValueError(f"no attention cost table for device {device!r}; expected one of {', '.join(COSTS)}")
    return COSTS[device]


def candidate_tiles(device: str, interpreting: bool = False) -> tuple[tuple[int, int], ...]:
    """Block-sparse tiles the planner may pick on ``device`` (one small tile when interpreting)."""
    if interpreting:
        return (INTERPRETER_TILE,)
    if device != "cuda":
        return ()
    table = cost_table("cuda")
    got = _tiles_of.get(id(table))
    if got is None or got[0] is not table:
        keys = table.get("block_sparse", {}).get("tiles", {})
        got = _tiles_of[id(table)] = (table, tuple(tuple(int(x) for x in key.split("x")) for key in keys))
    return got[1]


# ----------------------------------------------------------------------------------------- analysis
def _keep4(mask: torch.Tensor, L: int, S: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(bool keep mask as (B_m, H_m, L, S), 0-dim bool 'has additive values' or None)."""
    m = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    m = m.expand(m.shape[0], m.shape[1], L, S)
    if m.dtype == torch.bool:
        return m, None
    neginf = torch.isneginf(m)
    return ~neginf, ((m != 0) & ~neginf).any()


def _analyze(mask: torch.Tensor, L: int, S: int, causal: bool, tiles: Sequence[tuple[int, int]]) -> MaskStats:
    _counters["analyses"] += 1
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


def _stats_of_block_mask(bm: BlockMask) -> MaskStats:
    # statistics never hold the object they describe: the cache is keyed on it weakly
    tile = (bm.block_m, bm.block_n)
    empty = None
    if bm.band is not None:  # rows whose band misses [0, S): known without a dense mask
        empty = int((band_row_counts(bm.q_len, bm.kv_len, *bm.band) == 0).sum())
    return MaskStats(bm.batch, bm.heads, bm.q_len, bm.kv_len, bm.causal, bm.nnz, empty, False,
                     {tile: (bm.full_tiles + bm.partial_tiles, bm.full_tiles)},
                     kind="block" if bm.band is None else "band")


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
            _counters["analyses"] += 1
            st = _stats_of_block_mask(mask)
        elif isinstance(mask, SparseLayout):
            _counters["analyses"] += 1
            st = _stats_of_csr(CsrMask.of_layout(mask, batch, heads))
        else:
            per_mask.clear()  # an older version of this tensor is stale
            st = _analyze(mask, L, S, causal, tiles)
        per_mask[key] = st
    return st


# --------------------------------------------------------------------------------------- cost model
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).split(".")[-1]


def _tile_costs(table: dict, tile: tuple[int, int]) -> dict[str, float]:
    """The table's costs for ``tile``, or the nearest-area tile's scaled by area when it has none."""
    got = table.get(f"{tile[0]}x{tile[1]}")
    if got is not None:
        return got
    area = tile[0] * tile[1]

    def size(key: str) -> int:
        a, b = key.split("x")
        return int(a) * int(b)

    near = min(table, key=lambda key: abs(math.log(size(key) / area)))
    r = area / size(near)
    return {k: v * r for k, v in table[near].items()}


def estimate(stats: MaskStats | None, shape: tuple[int, int, int, int, int], dtype: torch.dtype, causal: bool,
             training: bool, device: str, sparse_off: str | None = None,
             csr_ok: bool = True) -> tuple[dict[str, float], tuple[int, int] | None]:
    """Estimated ms of every path (inf where it cannot run) and the best block-sparse tile.

    ``sparse_off`` says why the sparse paths cannot run (None when they can).
    """
    c = cost_table(device)
    B, H, L, S, D = shape
    work = B * H
    f = c["dtype_factor"].get(_dtype_name(dtype), 1.0)
    flops = 4.0 * work * L * S * D
    inf = math.inf
    est = {p: inf for p in PATHS}

    def total(path: str, ms: float, fwd_bwd: float | None = None) -> float:  # never below the path's floor
        factor = (fwd_bwd or c[path]["fwd_bwd"]) if training else 1.0
        return max(c[path].get("floor_ms", 0.0), f * ms) * factor

    if stats is None:
        rate = c["flash"]["causal_tflops"] if causal else c["flash"]["tflops"]
        est["flash"] = total("flash", c["flash"]["overhead_ms"] + flops * (0.5 if causal else 1.0) / (rate * 1e9))
    d = c["dense"]
    dense_ms = d["overhead_ms"] + flops / (d["tflops"] * 1e9) + L * S * d["mask_ns_per_elem"] * 1e-6
    if stats is not None and stats.empty_rows != 0:  # rows with nothing kept: zeroed around SDPA (extra ops)
        dense_ms += d.get("empty_rows_ms", 0.0)
    est["dense"] = total("dense", dense_ms)
    best_tile = None
    if stats is None or sparse_off is not None or stats.additive:
        return est, best_tile
    per_group = work / stats.groups
    scale_d = D / 64.0
    bs = c.get("block_sparse")
    if bs is not None:
        for tile, (visited, full) in stats.tiles.items():
            tc = _tile_costs(bs["tiles"], tile)
            ms = bs["overhead_ms"] + per_group * scale_d * 1e-6 * (full * tc["full_ns"] +
                                                                   (visited - full) * tc["partial_ns"])
            ms += work * -(-L // tile[0]) * bs["row_block_ns"] * 1e-6
            ms = total("block_sparse", ms, tc.get("fwd_bwd"))  # a tile's own backward factor when measured
            if ms < est["block_sparse"]:
                est["block_sparse"], best_tile = ms, tile
    cs = c.get("csr")
    if cs is not None and csr_ok and stats.kind != "block":  # a band BlockMask gets its lists from the band
        ms = cs["overhead_ms"] + (per_group * stats.nnz * scale_d * cs["pair_ns"] + work * L * cs["row_ns"]) * 1e-6
        est["csr"] = total("csr", ms)
    return est, best_tile


def choose(est: dict[str, float], device: str) -> tuple[str, str]:
    """(path, reason) from the estimates: the cheapest, but dense unless a sparse path wins by the margin."""
    ok = {p: ms for p, ms in est.items() if not math.isinf(ms)}
    if "flash" in ok:
        return "flash", "no mask: SDPA's fused kernels"
    best = min(ok, key=ok.get)
    if best == "dense":
        return "dense", f"dense is estimated fastest ({ok['dense']:.3g} ms)"
    margin = cost_table(device)["margin"]
    if ok[best] * margin > ok["dense"]:
        return "dense", (f"{best} ({ok[best]:.3g} ms) does not beat dense ({ok['dense']:.3g} ms) by the "
                         f"margin {margin}x")
    return best, f"{best} is estimated {ok['dense'] / ok[best]:.3g}x faster than dense ({ok[best]:.3g} vs " \
                 f"{ok['dense']:.3g} ms)"


def make_plan(stats: MaskStats | None, shape: tuple[int, int, int, int, int], kv_heads: int, dtype: torch.dtype,
              causal: bool, training: bool, device: str, dropout_p: float = 0.0,
              csr_ok: bool = True) -> AttentionPlan:
    """The plan for these statistics and this call (cached on ``stats``)."""
    key = (shape, kv_heads, dtype, causal, training, device, dropout_p > 0, csr_ok)
    if stats is not None and key in stats.plans:
        _counters["hits"] += 1
        return stats.plans[key]
    _counters["plans"] += 1
    D = shape[4]
    why_not = None
    if dropout_p > 0:
        why_not = "dropout needs the dense path"
    elif D not in SPARSE_HEAD_DIMS:
        why_not = f"head dim {D} is not one of {SPARSE_HEAD_DIMS}"
    est, tile = estimate(stats, shape, dtype, causal, training, device, why_not, csr_ok)
    path, reason = choose(est, device)
    if why_not is not None and path == "dense":
        reason += f"; sparse paths off: {why_not}"
    occ: dict[tuple[int, int], tuple[float, float]] = {}
    if stats is not None:
        for (bm, bn), (visited, full) in stats.tiles.items():
            n = stats.groups * -(-stats.q_len // bm) * -(-stats.kv_len // bn)
            occ[(bm, bn)] = (visited / n, full / n)
    plan = AttentionPlan(path, reason, device, shape, kv_heads, dtype, causal, training,
                         stats.density if stats else 1.0, stats.nnz if stats else shape[2] * shape[3],
                         stats.empty_rows if stats else 0, occ, est, tile, stats)
    if stats is not None:
        stats.plans[key] = plan
    return plan


def _device_kind(device: str | torch.device | None, fallback: torch.device) -> str:
    d = fallback if device is None else device
    return d if isinstance(d, str) else torch.device(d).type


def analyze(mask: Any, *, batch: int | None = None, heads: int | None = None, kv_heads: int | None = None,
            q_len: int | None = None, kv_len: int | None = None, head_dim: int = 64,
            dtype: torch.dtype = torch.bfloat16, causal: bool = False, training: bool = False,
            dropout_p: float = 0.0, device: str | torch.device | None = None) -> AttentionPlan:
    """Analyze ``mask`` (bool keep / additive float tensor broadcastable to (B, H, L, S), a BlockMask,
    a SparseLayout, or None) and plan ``masked_attention`` for the given shape on ``device``
    ('cuda' or 'cpu'; default: the mask's device). The analysis is cached per mask.
    """
    dev = _device_kind(device, _mask_device(mask))
    if mask is None:
        if q_len is None or kv_len is None:
            raise ValueError("analyze(None, ...) needs q_len and kv_len")
        B, H, L, S = batch or 1, heads or 1, q_len, kv_len
        stats = None
    else:
        B0, H0, L0, S0 = _mask_dims(mask)
        B, H = batch or B0, heads or H0
        L = q_len or L0
        S = kv_len or S0
        stats = mask_stats(mask, L, S, causal, candidate_tiles(dev), B, H)
    return make_plan(stats, (B, H, L, S, head_dim), kv_heads or H, dtype, causal, training, dev, dropout_p)


def _mask_device(mask: Any) -> torch.device:
    if mask is None:
        return torch.device("cpu")
    return mask.device


def _mask_dims(mask: Any) -> tuple[int, int, int, int]:
    if isinstance(mask, BlockMask):
        return mask.batch, mask.heads, mask.q_len, mask.kv_len
    if isinstance(mask, SparseLayout):
        return (mask.shape[0] if mask.per_batch else 1), 1, mask.shape[-2], mask.shape[-1]
    if not isinstance(mask, torch.Tensor) or mask.dim() < 2:
        raise TypeError(f"mask must be a tensor with at least 2 dims, a BlockMask or a SparseLayout, got {mask!r}")
    m = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    return m[0], m[1], m[2], m[3]


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
        else:
            stats.csr = CsrMask.from_mask(keep_with_causal(mask, stats))
    return stats.csr


def cheapest_band_tile(tiles: Sequence[tuple[int, int]], q_len: int, kv_len: int, band: tuple[int, int],
                       causal: bool, device: str) -> tuple[int, int]:
    """Of ``tiles``, the one with the lowest estimated block-sparse cost for the band mask lo <= j - i <= hi
    over (q_len, kv_len) on ``device`` (estimated from CPU-built tile lists; the ranking does not depend
    on B, H or D)."""
    if len(tiles) == 1:
        return tiles[0]

    def cost(tile: tuple[int, int]) -> float:
        bm = block_mask(window=band, q_len=q_len, kv_len=kv_len, causal=causal, block_size=tile)
        stats = _stats_of_block_mask(bm)  # not mask_stats: no cache entry or analysis count
        return estimate(stats, (1, 1, q_len, kv_len, 64), torch.bfloat16, causal, False, device)[0]["block_sparse"]

    return min(tiles, key=cost)


def band_layout(q_len: int, kv_len: int, lo: int, hi: int, device: torch.device | str | None = None) -> SparseLayout:
    """The (L, S) SparseLayout of lo <= j - i <= hi, built from the band (memory O(nnz), one sync)."""
    i = torch.arange(q_len, dtype=torch.int64, device=device)
    start = (i + lo).clamp_min(0)
    count = band_row_counts(q_len, kv_len, lo, hi, device)
    ro = torch.zeros(q_len + 1, dtype=torch.int64, device=device)
    ro[1:] = count.cumsum(0)
    rows = torch.repeat_interleave(i, count)
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
