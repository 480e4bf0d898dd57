"""Attention plans: which path ``masked_attention`` takes for a mask and a call, why, and at what cost.

``make_plan`` turns a mask's statistics (``analysis``) and the call's shape into every path's
estimated time (``cost``) and picks one; plans are cached on the statistics, per call shape.
``analyze`` plans for a mask without running it; ``band_mask`` builds a band BlockMask at the tile
the cost model rates cheapest.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from blockzoo.ops import backend, masks
from blockzoo.ops.attention import analysis, cost
from blockzoo.ops.attention.analysis import MaskStats
from blockzoo.ops.block_mask import BlockMask, block_mask
from blockzoo.ops.sparse.layout import SparseLayout


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
    estimates: dict[str, float]  # path -> ms (inf: cannot run)
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
            if st.kind == "documents":
                lines.append("  packed documents: tiles classified from the document ids (no L x L mask); the csr "
                             "path lists the kept pairs from them, only the dense path expands the mask")
            occ = ", ".join(f"{bm}x{bn}: {100 * v:.3g}% visited / {100 * f:.3g}% full"
                            for (bm, bn), (v, f) in self.occupancy.items())
            if occ:
                lines.append(f"  tiles: {occ}")
        est = []
        for p in cost.PATHS:
            ms = self.estimates.get(p, math.inf)
            txt = "cannot run" if math.isinf(ms) else f"{ms:.4g} ms"
            if p == "block_sparse" and self.tile is not None and not math.isinf(ms):
                txt += f" (tile {self.tile[0]}x{self.tile[1]})"
            est.append(f"{p} {txt}" + (" <- chosen" if p == self.path else ""))
        lines.append("  estimated: " + "; ".join(est))
        return "\n".join(lines)


@functools.cache
def sparse_head_dims() -> tuple[int, ...] | None:
    """Head dims both sparse Triton kernels run (their modules' ``HEAD_DIMS``); None without Triton,
    where no Triton kernel runs and none limits a path."""
    if not backend.triton_status()[0]:
        return None
    from blockzoo.ops.triton import blocksparse_attention, csr_attention

    return tuple(d for d in blocksparse_attention.HEAD_DIMS if d in csr_attention.HEAD_DIMS)


def make_plan(stats: MaskStats | None, shape: tuple[int, int, int, int, int], kv_heads: int, dtype: torch.dtype,
              causal: bool, training: bool, device: str, dropout_p: float = 0.0,
              csr_ok: bool = True) -> AttentionPlan:
    """The plan for these statistics and this call (cached on ``stats``)."""
    key = (shape, kv_heads, dtype, causal, training, device, dropout_p > 0, csr_ok)
    if stats is not None and key in stats.plans:
        analysis.count("hits")
        return stats.plans[key]
    analysis.count("plans")
    D = shape[4]
    head_dims = sparse_head_dims()
    why_not = None
    if dropout_p > 0:
        why_not = "dropout needs the dense path"
    elif head_dims is not None and D not in head_dims:
        why_not = f"head dim {D} is not one of {head_dims}"
    est, tile = cost.estimate(stats, shape, dtype, causal, training, device, why_not, csr_ok)
    path, reason = cost.choose(est, device)
    if why_not is not None and path == "dense":
        reason += f"; sparse paths off: {why_not}"
    occ: dict[tuple[int, int], tuple[float, float]] = {}
    if stats is not None:
        for (bm, bn), (visited, full) in stats.tiles.items():
            n = max(1, stats.groups * -(-stats.q_len // bm) * -(-stats.kv_len // bn))  # 0 tiles: L or S is 0
            occ[(bm, bn)] = (visited / n, full / n)
    plan = AttentionPlan(path, reason, device, shape, kv_heads, dtype, causal, training,
                         stats.density if stats else 1.0, stats.nnz if stats else shape[2] * shape[3],
                         stats.empty_rows if stats else 0, occ, est, tile, stats)
    if stats is not None:
        stats.plans[key] = plan
    return plan


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
        stats = analysis.mask_stats(mask, L, S, causal, cost.candidate_tiles(dev), B, H)
    return make_plan(stats, (B, H, L, S, head_dim), kv_heads or H, dtype, causal, training, dev, dropout_p)


def _device_kind(device: str | torch.device | None, fallback: torch.device) -> str:
    d = fallback if device is None else device
    return d if isinstance(d, str) else torch.device(d).type


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
    m = masks.as_4d(mask).shape
    return m[0], m[1], m[2], m[3]


@analysis.outside_graphs
def band_mask(window: tuple[int, int], q_len: int, kv_len: int, causal: bool = False,
              device: torch.device | str | None = None) -> BlockMask:
    """A band BlockMask keeping query i's keys j with lo <= j - i <= hi (``window = (lo, hi)``; and j <= i
    when ``causal``), built from the tile grid alone (no (q_len, kv_len) tensor). On the GPU its tile is
    the candidate tile with the lowest estimated block-sparse cost for this band (what the planner would
    pick for the dense mask); elsewhere the Triton interpreter's tile."""
    dev = torch.device(device or "cpu")
    tile = cost.cheapest_band_tile(cost.band_tiles(dev), q_len, kv_len, window, causal, dev.type)
    return block_mask(window=window, q_len=q_len, kv_len=kv_len, causal=causal, block_size=tile, device=dev)
