"""Block layouts for ``blocksparse`` attention: bool tensors (heads, nb_rows, nb_cols), True = block kept.

``heads`` is 1 when every head shares the layout, ``num_heads`` when heads differ (random blocks,
per-head summary columns). Block (r, c) covers queries ``r*block .. (r+1)*block`` and keys
``c*block .. (c+1)*block``. Patterns: Child et al., 2019 ("fixed"); DeepSpeed's variable sparsity
("variable"); Zaheer et al., 2020 ("bigbird"); Beltagy et al., 2020 ("longformer"); a block band ("local");
every block ("dense").
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

DIRECTIONS = ("bidirectional", "unidirectional")  # the "fixed" layout's attention direction


def _check_grid(nb_rows: int, nb_cols: int) -> None:
    if nb_rows < 1 or nb_cols < 1:
        raise ValueError(f"a layout needs at least one block row and column, got {nb_rows} x {nb_cols}")


def _band(nb_rows: int, nb_cols: int, num_window_blocks: int) -> torch.Tensor:
    if num_window_blocks < 1:
        raise ValueError(f"num_window_blocks must be >= 1, got {num_window_blocks}")
    r = torch.arange(nb_rows)[:, None]
    c = torch.arange(nb_cols)[None, :]
    return (r - c).abs() <= num_window_blocks // 2


def _global(nb_rows: int, nb_cols: int, global_block_indices: Sequence[int]) -> torch.Tensor:
    idx = list(global_block_indices)
    if any(i < 0 or i >= max(nb_rows, nb_cols) for i in idx):
        raise ValueError(f"global_block_indices {idx} out of range for a {nb_rows} x {nb_cols} block layout")
    row = torch.zeros(nb_rows, dtype=torch.bool)
    col = torch.zeros(nb_cols, dtype=torch.bool)
    row[[i for i in idx if i < nb_rows]] = True
    col[[i for i in idx if i < nb_cols]] = True
    return row[:, None] | col[None, :]


def _random(num_heads: int, nb_rows: int, nb_cols: int, num_random_blocks: int, seed: int) -> torch.Tensor:
    if num_random_blocks < 0:
        raise ValueError(f"num_random_blocks must be >= 0, got {num_random_blocks}")
    keep = torch.zeros(num_heads, nb_rows, nb_cols, dtype=torch.bool)
    n = min(num_random_blocks, nb_cols)
    if n:
        gen = torch.Generator().manual_seed(seed)
        cols = torch.rand(num_heads, nb_rows, nb_cols, generator=gen).argsort(-1)[..., :n]
        keep.scatter_(-1, cols, True)
    return keep


def local(nb_rows: int, nb_cols: int, num_window_blocks: int = 3) -> torch.Tensor:
    """(1, nb_rows, nb_cols): block (r, c) kept when |r - c| <= num_window_blocks // 2."""
    _check_grid(nb_rows, nb_cols)
    return _band(nb_rows, nb_cols, num_window_blocks)[None]


def fixed(nb_rows: int, nb_cols: int, local_blocks: int = 4, num_summary_blocks: int = 1, num_heads: int = 1,
          different_per_head: bool = False, direction: str = "bidirectional", horizontal_global: bool = False,
          num_global_patterns: int = 0) -> torch.Tensor:
    """Sparse Transformer "fixed" pattern (Child et al., 2019) at block granularity.

    Blocks are grouped in chunks of ``local_blocks``; a block row sees its own chunk and the last
    ``num_summary_blocks`` blocks of every chunk (the summary columns; a short last chunk's are its own
    last blocks: 7 blocks in chunks of 4 make block 6 a summary column). With ``different_per_head``
    head h uses the summary blocks shifted back by ``h % P`` summary widths, P = ``num_global_patterns``
    (0: every shift that fits, ``local_blocks // num_summary_blocks``); the result then has ``num_heads``
    heads, else 1. ``direction='unidirectional'`` keeps only block column <= block row (within the chunk
    and for the summary columns); ``horizontal_global`` (bidirectional only) lets the summary blocks, as
    rows, see every column too.

    Against xFormers' (DeepSpeed's) ``FixedSparsityConfig`` on a square grid (its ``num_global_blocks`` is
    ``num_summary_blocks``, ``num_different_global_patterns`` is ``num_global_patterns``, which it defaults
    to 1): equal, except that unidirectional summary groups of several blocks stay causal here (there a
    group's first rows also see its later blocks), and that a short last chunk places a shifted head's
    summary blocks back from the grid's end here (there at the chunk's offset, clamped to the grid).
    A layout built there can be passed as ``layout='custom'`` or loaded as the module's ``layout`` buffer.
    """
    _check_grid(nb_rows, nb_cols)
    if local_blocks < 1 or not 1 <= num_summary_blocks <= local_blocks:
        raise ValueError(f"need local_blocks >= 1 and 1 <= num_summary_blocks <= local_blocks, "
                         f"got {local_blocks} and {num_summary_blocks}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if horizontal_global and direction != "bidirectional":
        raise ValueError("horizontal_global needs direction='bidirectional' (a summary row seeing every column "
                         "would see the future)")
    shifts = local_blocks // num_summary_blocks
    if not 0 <= num_global_patterns <= shifts:
        raise ValueError(f"num_global_patterns must be in [0, local_blocks // num_summary_blocks = {shifts}], "
                         f"got {num_global_patterns}")
    if num_global_patterns > 1 and not different_per_head:
        raise ValueError(f"num_global_patterns={num_global_patterns} needs different_per_head=True (one layout is "
                         "shared by every head otherwise)")
    r = torch.arange(nb_rows)[:, None]
    c = torch.arange(nb_cols)[None, :]
    heads = num_heads if different_per_head else 1
    shift = torch.arange(heads)[:, None, None] % (num_global_patterns or shifts)
    first = shift * num_summary_blocks  # the head's summary blocks, counted back from its chunk's last block

    def summary(idx: torch.Tensor, n: int) -> torch.Tensor:
        from_end = (((idx // local_blocks + 1) * local_blocks).clamp_max(n) - 1 - idx)[None]
        return (from_end >= first) & (from_end < first + num_summary_blocks)

    keep = (r // local_blocks == c // local_blocks)[None] | summary(c, nb_cols)
    if horizontal_global:
        keep = keep | summary(r, nb_rows)
    if direction == "unidirectional":
        keep = keep & (c <= r)[None]
    return keep


def dense(nb_rows: int, nb_cols: int) -> torch.Tensor:
    """(1, nb_rows, nb_cols): every block kept (the dense reference of a block-sparse model)."""
    _check_grid(nb_rows, nb_cols)
    return torch.ones(1, nb_rows, nb_cols, dtype=torch.bool)


def variable(nb_rows: int, nb_cols: int, window_blocks: Sequence[int] = (4,),
             global_block_indices: Sequence[int] = (0,), num_random_blocks: int = 0, num_heads: int = 1,
             seed: int = 0) -> torch.Tensor:
    """Variable sparsity (DeepSpeed Sparse Attention): consecutive local windows of the given sizes
    (the last size repeats; blocks in one window see each other), global blocks (rows and columns)
    and ``num_random_blocks`` random columns per block row (different per head, from ``seed``).

    Returns ``num_heads`` heads when random blocks are drawn, else 1.
    """
    _check_grid(nb_rows, nb_cols)
    sizes = list(window_blocks)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"window_blocks must be non-empty sizes >= 1, got {sizes}")
    window_id: list[int] = []
    while len(window_id) < max(nb_rows, nb_cols):
        w = window_id[-1] + 1 if window_id else 0
        window_id.extend([w] * sizes[min(w, len(sizes) - 1)])
    wid = torch.tensor(window_id)
    keep = (wid[:nb_rows, None] == wid[None, :nb_cols]) | _global(nb_rows, nb_cols, global_block_indices)
    if num_random_blocks == 0:
        return keep[None]
    return keep | _random(num_heads, nb_rows, nb_cols, num_random_blocks, seed)


def bigbird(nb_rows: int, nb_cols: int, num_window_blocks: int = 3, global_block_indices: Sequence[int] = (0,),
            num_random_blocks: int = 1, num_heads: int = 1, seed: int = 0) -> torch.Tensor:
    """BigBird (Zaheer et al., 2020): a sliding window of ``num_window_blocks``, global blocks (rows
    and columns) and ``num_random_blocks`` random columns per block row, different per head.

    Returns ``num_heads`` heads when random blocks are drawn, else 1.
    """
    _check_grid(nb_rows, nb_cols)
    keep = _band(nb_rows, nb_cols, num_window_blocks) | _global(nb_rows, nb_cols, global_block_indices)
    if num_random_blocks == 0:
        return keep[None]
    return keep | _random(num_heads, nb_rows, nb_cols, num_random_blocks, seed)


def longformer(nb_rows: int, nb_cols: int, num_window_blocks: int = 3,
               global_block_indices: Sequence[int] = (0,)) -> torch.Tensor:
    """Longformer (Beltagy et al., 2020): a sliding window of ``num_window_blocks`` plus global
    blocks that see every block and are seen by every block; shape (1, nb_rows, nb_cols)."""
    _check_grid(nb_rows, nb_cols)
    return (_band(nb_rows, nb_cols, num_window_blocks) | _global(nb_rows, nb_cols, global_block_indices))[None]


def expand_layout(layout: torch.Tensor, block_size: int, rows: int, cols: int) -> torch.Tensor:
    """(heads, nb_rows, nb_cols) block layout -> (heads, rows, cols) element mask, cropped at the end."""
    nb_rows, nb_cols = layout.shape[-2:]
    if rows > nb_rows * block_size or cols > nb_cols * block_size:
        raise ValueError(f"{rows} queries x {cols} keys exceed the layout: {nb_rows} x {nb_cols} blocks "
                         f"of {block_size}")
    nr, nc = -(-rows // block_size), -(-cols // block_size)
    mask = layout[:, :nr, :nc].repeat_interleave(block_size, 1).repeat_interleave(block_size, 2)
    return mask[:, :rows, :cols]
