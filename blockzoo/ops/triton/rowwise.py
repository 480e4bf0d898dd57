"""Shared pieces of the row-wise Triton kernels (softmax, layer_norm, rms_norm).

Block-size heuristics, the (rows, n) view of an input, the tile coordinates and chunk sums the
kernels use, and the column-sum kernel that finishes two-stage weight-gradient reductions. The
module-level sizes are read at call time, so tests and benchmarks can change them (tests lower
them to reach the split-row paths on small inputs).
"""
import torch
import triton
import triton.language as tl

from blockzoo.ops.triton import launch
from blockzoo.ops.triton.launch import cdiv, next_pow2

MAX_FUSED_N = 16384  # rows up to this many elements are held in registers (one pass over memory)
SPLIT_CHUNK = 8192  # elements per program on the split-row path (rows longer than MAX_FUSED_N)
TILE = 4096  # elements one program of a fused kernel aims to hold (several rows when rows are short)
ELEMS_PER_THREAD = 16  # fused kernels: num_warps = tile elements / (32 * ELEMS_PER_THREAD), clamped to [1, 16]
BWD_STAGES = 2  # software-pipelining depth of the persistent norm backward loop (1: no prefetch)


def warps_for(elems: int) -> int:
    """num_warps for a program holding ``elems`` elements: about ELEMS_PER_THREAD per thread."""
    return max(1, min(16, elems // (32 * ELEMS_PER_THREAD)))


def bwd_warps_for(elems: int) -> int:
    """num_warps for a norm backward program (five live tiles): half ELEMS_PER_THREAD per thread."""
    return max(1, min(16, elems // (32 * max(1, ELEMS_PER_THREAD // 2))))


def fused_config(m: int, n: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_N, num_warps) for a fused kernel: whole rows, several per program when short."""
    block_n = next_pow2(n)
    rows = max(1, min(TILE // block_n, next_pow2(m)))
    return rows, block_n, warps_for(rows * block_n)


def use_split(n: int, limit: int | None = None) -> bool:
    """Rows longer than ``limit`` (default MAX_FUSED_N) take the split-row path."""
    return n > (MAX_FUSED_N if limit is None else limit)


def split_config(n: int, max_chunk: int | None = None) -> tuple[int, int, int, int]:
    """(CHUNK, chunks per row, BLOCK_C, num_warps) for the split-row path (chunks of at most SPLIT_CHUNK)."""
    chunk = min(next_pow2(n), max_chunk or SPLIT_CHUNK)
    c = cdiv(n, chunk)
    return chunk, c, next_pow2(c), warps_for(chunk)


def rows_view(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` as an (M, n) matrix with unit stride along rows (a view when the layout allows, else a copy)."""
    x2 = x.reshape(-1, n)
    if x2.stride(1) != 1 and n > 1:
        x2 = x2.contiguous()
    return x2


@triton.jit
def tile_coords(C, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, REVERSE: tl.constexpr):
    """First row (scalar), rows [ROWS, 1], columns [1, BLOCK_N] and chunk index of this program's tile.

    Program p covers row block p // C and column chunk p % C. ``REVERSE`` walks the tiles backwards,
    so a second pass over a split row starts with the tiles the first pass left in L2.
    """
    pid = tl.program_id(0)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
    chunk = pid % C
    row0 = (pid // C) * ROWS
    rows = row0 + tl.arange(0, ROWS)[:, None]
    cols = chunk * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    return row0, rows, cols, chunk


@triton.jit
def chunk_sum(p_ptr, row, NC, BLOCK_C: tl.constexpr):
    """Sum of a split row's NC per-chunk partials (a scalar: broadcasting it into a tile is free)."""
    pc = tl.arange(0, BLOCK_C)
    return tl.sum(tl.load(p_ptr + row * NC + pc, mask=pc < NC, other=0.0), axis=0)


@triton.jit
def _col_sum_kernel(a_ptr, b_ptr, out_a, out_b, G, N, TWO: tl.constexpr, BLOCK_G: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """out_a[j] = sum_g a[g, j] (and out_b from b when TWO), fp32 accumulation, BLOCK_N columns a program."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc_a = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        m = (g[:, None] < G) & cmask[None, :]
        off = g[:, None].to(tl.int64) * N + cols[None, :]
        acc_a += tl.load(a_ptr + off, mask=m, other=0.0)
        if TWO:
            acc_b += tl.load(b_ptr + off, mask=m, other=0.0)
    tl.store(out_a + cols, tl.sum(acc_a, axis=0).to(out_a.dtype.element_ty), mask=cmask)
    if TWO:
        tl.store(out_b + cols, tl.sum(acc_b, axis=0).to(out_b.dtype.element_ty), mask=cmask)


def col_sums(parts: list[torch.Tensor], dtypes: list[torch.dtype]) -> list[torch.Tensor]:
    """Second stage of a two-stage reduction, one launch: each (G, N) fp32 buffer summed over G, cast."""
    g, n = parts[0].shape
    outs = [torch.empty(n, dtype=dt, device=parts[0].device) for dt in dtypes]
    two = len(parts) == 2
    block_n = max(32, min(256, next_pow2(cdiv(n, 256))))  # >= n/256 programs
    launch.launch(_col_sum_kernel, (cdiv(n, block_n),), parts[0], parts[-1], outs[0], outs[-1], g, n, TWO=two,
                  BLOCK_G=min(64, next_pow2(g)), BLOCK_N=block_n, num_warps=4)
    return outs
