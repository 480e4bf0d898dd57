"""Attention restricted (or biased) by a 2-D pattern over the token grid: axial (Ho et al., 2019), local
2-D and Gaussian neighbourhoods, Swin windows (Liu et al., 2021) and dilated grids."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from blockzoo import ops
from blockzoo.blocks.attention.pattern import PatternAttention
from blockzoo.blocks.attention.pooling import grid_side
from blockzoo.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, AttentionConfig, ConfigError, check_values, one_of
from blockzoo.registry import register_attention


def _f(default: object, help: str, check: object) -> object:
    return field(default=default, metadata={"help": help, "check": check})


@dataclass
class Pattern2DConfig(AttentionConfig):
    """Config of 2-D pattern attention; each pattern reads the fields named in its help."""

    pattern: str = _f("axial_h", "axial_h, axial_v, local_2d, gaussian_2d, swin, dilated_2d", one_of(*ops.PATTERNS_2D))
    height: int = _f(0, "grid rows (0 with width 0: a square grid of side sqrt(L))", NON_NEGATIVE)
    width: int = _f(0, "grid columns (0 with height 0: a square grid)", NON_NEGATIVE)
    distance: float = _f(2.0, "local_2d: keep keys at p-norm grid distance < distance", POSITIVE)
    p: float = _f(2.0, "local_2d: the norm's p (inf: max norm)", POSITIVE)
    sigma: float = _f(1.0, "gaussian_2d: standard deviation, in grid cells", POSITIVE)
    window_size: int = _f(4, "swin: window side", AT_LEAST_1)
    shift: int = _f(0, "swin: window shift, in [0, window_size)", NON_NEGATIVE)
    dilation: int = _f(2, "dilated_2d: keep keys whose row and column offsets are multiples of it", AT_LEAST_1)

    def cross_check(self, path: str) -> None:
        """The shift fits the window; height and width are given together."""
        if self.shift >= self.window_size:
            raise ConfigError(f"{path}.shift={self.shift} must be < {path}.window_size={self.window_size}")
        if (self.height == 0) != (self.width == 0):
            raise ConfigError(f"{path}.height={self.height} and {path}.width={self.width}: give both, or neither "
                              "(a square grid)")


@register_attention("pattern_2d", Pattern2DConfig)
class Pattern2DAttention(PatternAttention):
    """Softmax attention over a ``height x width`` token grid (row-major) under the 2-D ``pattern``
    of ``blockzoo.ops.pattern_2d``: a keep mask, or for ``gaussian_2d`` an additive log-Gaussian bias
    (kept in float64, exact at every input precision).

    The pattern is built once per (L, device) and combined with the caller's mask, causal flag and key
    padding in ``blockzoo.ops.masked_attention``. L must be ``height * width`` (with both 0, a perfect
    square); keys are the same grid: no cross-attention.
    """

    supports_cross = False
    supports_documents = False  # the pattern is tied to each token's absolute grid cell

    def __init__(self, cfg: Pattern2DConfig):
        check_values(cfg, "attention")
        super().__init__(cfg)
        self.requires_grid = cfg.height == 0

    def grid(self, length: int) -> tuple[int, int]:
        """(height, width) of the grid of ``length`` tokens."""
        if self.cfg.height == 0:
            side = grid_side(length, f"pattern_2d attention ({self.cfg.pattern})")
            return side, side
        if self.cfg.height * self.cfg.width != length:
            raise ValueError(f"pattern_2d attention was configured for a {self.cfg.height} x {self.cfg.width} grid "
                             f"({self.cfg.height * self.cfg.width} tokens), got L={length}")
        return self.cfg.height, self.cfg.width

    def build_pattern(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        c = self.cfg
        height, width = self.grid(rows)
        return ops.pattern_2d(c.pattern, height, width, distance=c.distance, p=c.p, sigma=c.sigma,
                              window_size=c.window_size, shift=c.shift, dilation=c.dilation, device=device,
                              dtype=torch.float64)[None]
