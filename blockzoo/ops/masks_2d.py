"""Attention patterns over a 2-D token grid, as masks for ``blockzoo.ops.masked_attention``.

The ``height x width`` grid is flattened row-major: token ``t`` sits at row ``t // width``, column
``t % width``. Each builder returns an ``(L, L)`` tensor, ``L = height * width``: a bool keep mask
(True = query i may attend to key j), or for ``gaussian_2d`` an additive float bias. Every pattern
keeps (or, for the bias, weights highest) each token's own key, so no query row is empty.

Patterns (the offsets ``dr = r_j - r_i``, ``dc = c_j - c_i`` between query i and key j):

* ``axial_h``: same row (``dr == 0``); ``axial_v``: same column (``dc == 0``).
* ``local_2d``: ``||(dr, dc)||_p < distance`` (``p`` in (0, inf]; inf is the max norm).
* ``gaussian_2d``: bias ``-(dr**2 + dc**2) / (2 sigma**2)``, the log of a Gaussian weight.
* ``swin``: same window of a ``window_size`` partition whose boundaries sit at ``shift + k * window_size``
  along each axis (Liu et al., 2021: the shifted partition, windows cut at the border not wrapped).
* ``dilated_2d``: ``dr`` and ``dc`` both multiples of ``dilation``.

:func:`pattern_2d` is the one dispatch by name; :func:`pattern_2d_block_mask` gives the
:class:`~blockzoo.ops.block_mask.BlockMask` the block-sparse path takes (``axial_h`` is block-diagonal
in rows of ``width`` tokens and is built from that layout); :func:`block_layout` covers any keep mask
with the blocks of a block layout (what ``blocksparse`` attention's ``custom`` layout takes).
"""
from __future__ import annotations

import math

import torch

from blockzoo.ops.block_mask import DEFAULT_TILE, BlockMask, block_mask
from blockzoo.suggest import close_matches

PATTERNS_2D = ("axial_h", "axial_v", "local_2d", "gaussian_2d", "swin", "dilated_2d")


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def grid_offsets(height: int, width: int, device: torch.device | str | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dr, dc), each (L, L) int64: row and column offset from query token i to key token j."""
    _check_int("height", height, 1)
    _check_int("width", width, 1)
    t = torch.arange(height * width, device=device)
    r, c = t // width, t % width
    return r[None, :] - r[:, None], c[None, :] - c[:, None]


def axial_h_keep(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(L, L) bool: keys in the query's row."""
    dr, _ = grid_offsets(height, width, device)
    return dr == 0


def axial_v_keep(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(L, L) bool: keys in the query's column."""
    _, dc = grid_offsets(height, width, device)
    return dc == 0


def local_2d_keep(height: int, width: int, distance: float, p: float = 2.0,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(L, L) bool: keys whose p-norm grid distance to the query is below ``distance`` (> 0)."""
    if not isinstance(distance, (int, float)) or isinstance(distance, bool) or not distance > 0:
        raise ValueError(f"distance must be a number > 0, got {distance!r}")
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not p > 0:
        raise ValueError(f"p must be a number > 0 (or math.inf), got {p!r}")
    dr, dc = (d.abs().to(torch.float64) for d in grid_offsets(height, width, device))
    if math.isinf(p):
        return torch.maximum(dr, dc) < distance
    # compared without the root: exact for integer p on integer offsets
    return dr.pow(p) + dc.pow(p) < float(distance) ** p


def gaussian_2d_bias(height: int, width: int, sigma: float = 1.0, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(L, L) additive bias ``-(dr**2 + dc**2) / (2 sigma**2)``: softmax then weights keys by a 2-D Gaussian."""
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    dr, dc = (d.to(torch.float64) for d in grid_offsets(height, width, device))
    return (-(dr * dr + dc * dc) / (2.0 * float(sigma) ** 2)).to(dtype)


def swin_keep(height: int, width: int, window_size: int, shift: int = 0,
              device: torch.device | str | None = None) -> torch.Tensor:
    """(L, L) bool: keys in the query's window; windows of ``window_size`` cut at ``shift + k * window_size``
    along each axis (``0 <= shift < window_size``; border windows may be smaller)."""
    _check_int("window_size", window_size, 1)
    _check_int("shift", shift, 0)
    if shift >= window_size:
        raise ValueError(f"shift must be in [0, window_size={window_size}), got {shift}")
    _check_int("height", height, 1)
    _check_int("width", width, 1)
    t = torch.arange(height * width, device=device)
    offset = (window_size - shift) % window_size
    wr = (t // width + offset) // window_size
    wc = (t % width + offset) // window_size
    return (wr[:, None] == wr[None, :]) & (wc[:, None] == wc[None, :])


def dilated_2d_keep(height: int, width: int, dilation: int = 2,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """(L, L) bool: keys whose row and column offsets from the query are both multiples of ``dilation``."""
    _check_int("dilation", dilation, 1)
    dr, dc = grid_offsets(height, width, device)
    return (dr % dilation == 0) & (dc % dilation == 0)


def pattern_2d(kind: str, height: int, width: int, *, distance: float = 2.0, p: float = 2.0, sigma: float = 1.0,
               window_size: int = 4, shift: int = 0, dilation: int = 2,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``kind`` pattern (one of :data:`PATTERNS_2D`) over a ``height x width`` grid; each kind reads
    its own fields (local_2d: distance, p; gaussian_2d: sigma, dtype; swin: window_size, shift;
    dilated_2d: dilation)."""
    if kind == "axial_h":
        return axial_h_keep(height, width, device)
    if kind == "axial_v":
        return axial_v_keep(height, width, device)
    if kind == "local_2d":
        return local_2d_keep(height, width, distance, p, device)
    if kind == "gaussian_2d":
        return gaussian_2d_bias(height, width, sigma, device, dtype)
    if kind == "swin":
        return swin_keep(height, width, window_size, shift, device)
    if kind == "dilated_2d":
        return dilated_2d_keep(height, width, dilation, device)
    raise ValueError(f"kind must be one of {', '.join(PATTERNS_2D)}, got {kind!r}"
                     f"{close_matches(kind, list(PATTERNS_2D)) if isinstance(kind, str) else ''}")


def pattern_2d_block_mask(kind: str, height: int, width: int, *, block_size: int | tuple[int, int] = DEFAULT_TILE,
                          causal: bool = False, device: torch.device | str | None = None,
                          **fields: float) -> BlockMask:
    """The keep pattern ``kind`` as a :class:`BlockMask` for the block-sparse attention path
    (``fields`` as in :func:`pattern_2d`). ``gaussian_2d`` is a bias, not a keep set: ValueError."""
    if kind == "gaussian_2d":
        raise ValueError("kind 'gaussian_2d' is an additive bias and has no block mask; pass the bias as the mask")
    if kind == "axial_h":  # block-diagonal: row r of the grid is the token block [r*width, (r+1)*width)
        _check_int("height", height, 1)
        _check_int("width", width, 1)
        layout = torch.eye(height, dtype=torch.bool, device=device)
        L = height * width
        return block_mask(layout=layout, layout_block=width, q_len=L, kv_len=L, causal=causal,
                          block_size=block_size)
    keep = pattern_2d(kind, height, width, device=device, **fields)
    return block_mask(keep, causal=causal, block_size=block_size)


def block_layout(keep: torch.Tensor, block_size: int) -> torch.Tensor:
    """(..., ceil(L / b), ceil(S / b)) bool: the blocks of side ``block_size`` holding any kept entry of the
    (..., L, S) bool ``keep``; expanded back, it covers ``keep`` (equal to it when ``keep`` is block-structured)."""
    _check_int("block_size", block_size, 1)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.dim() < 2:
        raise TypeError(f"keep must be a bool (..., L, S) tensor, got {getattr(keep, 'dtype', type(keep))}")
    L, S = keep.shape[-2:]
    nr, nc = -(-L // block_size), -(-S // block_size)
    padded = keep.new_zeros(*keep.shape[:-2], nr * block_size, nc * block_size)
    padded[..., :L, :S] = keep
    tiles = padded.reshape(*keep.shape[:-2], nr, block_size, nc, block_size)
    return tiles.any(-1).any(-2)
