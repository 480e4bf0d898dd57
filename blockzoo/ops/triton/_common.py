"""Shared pieces of the row-wise Triton kernels (softmax, layer_norm, rms_norm).

Block-size heuristics, the (rows, n) view of an input, the launch helper and the column-sum
kernel that finishes two-stage weight-gradient reductions. The module-level sizes are read at
call time, so tests can lower them to reach the split-row paths on small inputs.
"""
import functools
import os

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

MAX_FUSED_N = 16384  # rows up to this many elements are held in registers (one pass over memory)
SPLIT_CHUNK = 8192  # elements per program on the split-row path (rows longer than MAX_FUSED_N)
TILE = 4096  # elements one program of a fused kernel aims to hold (several rows when rows are short)
ELEMS_PER_THREAD = 16  # fused kernels: num_warps = tile elements / (32 * ELEMS_PER_THREAD), clamped to [1, 16]


def interpreting() -> bool:
    """True when kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _is_fake(t: object) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return isinstance(t, torch.Tensor) and is_fake(t)


def launch(kernel, grid: tuple[int, ...], *args, **meta) -> None:
    """Launch ``kernel`` through ``wrap_triton`` (traceable by torch.compile).

    The interpreter cannot run on fake tensors (torch.compile tracing under ``TRITON_INTERPRET=1``);
    there the launch is skipped, since tracing needs only the outputs' metadata.
    """
    if interpreting() and any(_is_fake(a) for a in args):
        return
    wrap_triton(kernel)[grid](*args, **meta)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors on ``device`` (4 on the CPU interpreter: enough to test persistence)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def warps_for(elems: int) -> int:
    """num_warps for a program holding ``elems`` elements: about ELEMS_PER_THREAD per thread."""
    return max(1, min(16, elems // (32 * ELEMS_PER_THREAD)))


def bwd_warps_for(elems: int) -> int:
    """num_warps for a norm backward program (five live tiles): half ELEMS_PER_THREAD per thread."""
    return max(1, min(16, elems // (32 * max(1, ELEMS_PER_THREAD // 2))))


def persistent_programs(device: torch.device, num_warps: int, tiles: int, chunks: int = 1) -> int:
    """Programs per column chunk of a persistent grid over ``tiles`` row tiles: about 1024 threads per SM."""
    per_sm = max(1, 1024 // (32 * num_warps))
    return max(1, min(tiles, num_sms(device) * per_sm // chunks))


@triton.jit
def tile_coords(C, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, REVERSE: tl.constexpr):
    """Rows [ROWS, 1], columns [1, BLOCK_N] and chunk index of this program's tile.

    Program p covers row block p // C and column chunk p % C. ``REVERSE`` walks the tiles backwards,
    so a second pass over a split row starts with the tiles the first pass left in L2.
    """
    pid = tl.program_id(0)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
    chunk = pid % C
    rows = (pid // C) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = chunk * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    return rows, cols, chunk


def fused_config(m: int, n: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_N, num_warps) for a fused kernel: whole rows, several per program when short."""
    block_n = triton.next_power_of_2(n)
    rows = max(1, min(TILE // block_n, triton.next_power_of_2(m)))
    return rows, block_n, warps_for(rows * block_n)


def use_split(n: int, limit: int | None = None) -> bool:
    """Rows longer than ``limit`` (default MAX_FUSED_N) take the split-row path."""
    return n > (MAX_FUSED_N if limit is None else limit)


def split_config(n: int, max_chunk: int | None = None) -> tuple[int, int, int, int]:
    """(CHUNK, chunks per row, BLOCK_C, num_warps) for the split-row path (chunks of at most SPLIT_CHUNK)."""
    chunk = min(triton.next_power_of_2(n), max_chunk or SPLIT_CHUNK)
    c = triton.cdiv(n, chunk)
    return chunk, c, triton.next_power_of_2(c), warps_for(chunk)


def rows_view(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` as an (M, n) matrix with unit stride along rows (a view when the layout allows, else a copy)."""
    x2 = x.reshape(-1, n)
    if x2.stride(1) != 1 and n > 1:
        x2 = x2.contiguous()
    return x2


@triton.jit
def _col_sum_kernel(part_ptr, out_ptr, G, N, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[j] = sum_g part[g, j] (fp32 accumulation), one program per BLOCK_N columns."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < N
    acc = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        m = (g[:, None] < G) & cmask[None, :]
        acc += tl.load(part_ptr + g[:, None].to(tl.int64) * N + cols[None, :], mask=m, other=0.0)
    tl.store(out_ptr + cols, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=cmask)


def col_sum(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Second stage of a two-stage reduction: sum a (G, N) fp32 partial buffer over G, cast to ``dtype``."""
    g, n = part.shape
    out = torch.empty(n, dtype=dtype, device=part.device)
    block_n = max(32, min(256, triton.next_power_of_2(triton.cdiv(n, 256))))  # >= n/256 programs
    block_g = min(64, triton.next_power_of_2(g))
    launch(_col_sum_kernel, (triton.cdiv(n, block_n),), part, out, g, n, BLOCK_G=block_g, BLOCK_N=block_n,
           num_warps=4)
    return out
