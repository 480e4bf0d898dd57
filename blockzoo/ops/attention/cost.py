"""The cost model of ``masked_attention``: its paths, their estimated times, and the block-sparse tiles.

The constants come from a cost table per device kind, shipped as package data in ``costs/<kind>.json``
(each file a JSON object ``{"<kind>": table}``, the format ``benchmarks/bench_attention.py`` writes
when it refits the "cuda" table, so a refit can replace ``costs/cuda.json``); ``BLOCKZOO_ATTENTION_COSTS``
names a JSON file in that format whose tables override the shipped ones.

In a table, times are in ms for a whole call. Per-tile and per-pair costs are machine-wide
throughputs (total time / count) at head dim 64, scaled linearly with D / 64; ``fwd_bwd`` multiplies
a forward estimate when gradients are needed (a block-sparse tile's own ``fwd_bwd``, when present,
replaces the path's); ``floor_ms`` (optional) is a path's time for a tiny call, the least any call
costs (host time per call: it decides short sequences); ``empty_rows_ms`` (optional) is what dense
adds for a mask with fully masked rows; ``dtype_factor`` multiplies every estimate; ``margin``: a
sparse path is picked only when dense is estimated at least this many times slower; ``source`` says
where the numbers come from.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from importlib import resources

import torch

from blockzoo.ops.attention import analysis
from blockzoo.ops.block_mask import DEFAULT_TILE, block_mask

PATHS = ("flash", "block_sparse", "csr", "dense")
COSTS_ENV = "BLOCKZOO_ATTENTION_COSTS"
INTERPRETER_TILE = (32, 32)  # block-sparse tile when the Triton interpreter runs the kernels (tests)


def _shipped_tables() -> dict[str, dict]:
    """Device kind -> cost table, from the package's ``costs/*.json``."""
    tables: dict[str, dict] = {}
    for entry in sorted(resources.files(__package__).joinpath("costs").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            kind = entry.name[:-len(".json")]
            got = json.loads(entry.read_text())
            if set(got) != {kind}:
                raise ValueError(f"attention cost file {entry.name} must hold one table keyed {kind!r}, "
                                 f"got keys {sorted(got)}")
            tables.update(got)
    return tables


COSTS: dict[str, dict] = _shipped_tables()
_costs_loaded: dict[str, dict] = {}
# id(cost table) -> (table, its block-sparse tiles); tables are replaced, never edited in place
_tiles_of: dict[int, tuple[dict, tuple[tuple[int, int], ...]]] = {}


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


def band_tiles(device: torch.device) -> tuple[tuple[int, int], ...]:
    """Block-sparse tiles a band mask on ``device`` may take (the interpreter's one tile off the GPU:
    only the Triton interpreter runs the block-sparse kernel there)."""
    if device.type == "cuda":
        return candidate_tiles("cuda") or (DEFAULT_TILE,)
    return (INTERPRETER_TILE,)


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


def estimate(stats: analysis.MaskStats | None, shape: tuple[int, int, int, int, int], dtype: torch.dtype,
             causal: bool, training: bool, device: str, sparse_off: str | None = None,
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
    per_group = work / max(1, stats.groups)
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
    if cs is not None and csr_ok and stats.kind != "block":  # band / document BlockMasks list their pairs
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


def cheapest_band_tile(tiles: Sequence[tuple[int, int]], q_len: int, kv_len: int, band: tuple[int, int],
                       causal: bool, device: str) -> tuple[int, int]:
    """Of ``tiles``, the one with the lowest estimated block-sparse cost for the band mask lo <= j - i <= hi
    over (q_len, kv_len) on ``device`` (estimated from CPU-built tile lists; the ranking does not depend
    on B, H or D)."""
    if len(tiles) == 1:
        return tiles[0]

    def cost(tile: tuple[int, int]) -> float:
        bm = block_mask(window=band, q_len=q_len, kv_len=kv_len, causal=causal, block_size=tile)
        stats = analysis.stats_of_block_mask(bm)  # not mask_stats: no cache entry or analysis count
        return estimate(stats, (1, 1, q_len, kv_len, 64), torch.bfloat16, causal, False, device)[0]["block_sparse"]

    return min(tiles, key=cost)
