"""Patch embedding for images (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words", ViT)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from blockzoo.config import NON_NEGATIVE, EmbeddingConfig, _f
from blockzoo.registry import register_embedding


@dataclass
class PatchConfig(EmbeddingConfig):
    """Config of the patch embedding (``vocab_size`` and ``max_seq_len`` are not used)."""

    patch_size: int = field(default=4, metadata={"help": "patch side: conv kernel (and stride, unless set)"})
    channels: int = field(default=3, metadata={"help": "image channels (set by the model)"})
    image_size: int = field(default=32, metadata={"help": "image side, sizes the position table (set by the model)"})
    positions: bool = field(default=True, metadata={"help": "add learned absolute positions"})
    stride: int = _f(0, "conv stride (0 = patch_size: non-overlapping patches)", NON_NEGATIVE)
    padding: int = _f(0, "zero padding on each side of the image", NON_NEGATIVE)
    square_sequences: bool = _f(False, "also take (B, L, channels) sequences of a square grid (row-major), "
                                       "e.g. a hierarchical stage's output")


def _side(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of the patch conv over ``size`` pixels."""
    return (size + 2 * padding - kernel) // stride + 1


@register_embedding("patch", PatchConfig)
class PatchEmbedding(nn.Module):
    """Cuts images into patches and projects each to ``dim_model`` (+ learned positions).

    Input: float images (B, C, H, W), channels first, C = ``channels``; with the default stride
    (= ``patch_size``) and no padding, H and W multiples of ``patch_size`` (with ``positions``,
    H = W = ``image_size``). With ``square_sequences``, also (B, H·H, C) sequences, read as an H×H
    grid row by row. Output: (B, L, dim_model), one token per conv position in row-major order
    (row by row, left to right), the layout the grid mechanisms (``conv2d`` feedforward, grid
    attentions) read back as a grid. Unlike the token embeddings it takes no token ids.
    """

    def __init__(self, cfg: PatchConfig):
        super().__init__()
        if cfg.patch_size < 1 or cfg.channels < 1 or cfg.dim_model < 1:
            raise ValueError(f"embedding 'patch' needs patch_size, channels and dim_model >= 1, got "
                             f"{cfg.patch_size}, {cfg.channels}, {cfg.dim_model}")
        self.cfg = cfg
        self.stride = cfg.stride or cfg.patch_size
        self.tiles = self.stride == cfg.patch_size and cfg.padding == 0  # non-overlapping, nothing padded
        if cfg.positions and (_side(cfg.image_size, cfg.patch_size, self.stride, cfg.padding) < 1
                              or (self.tiles and cfg.image_size % cfg.patch_size)):
            raise ValueError(f"embedding 'patch': image_size={cfg.image_size} must be a positive multiple of "
                             f"patch_size={cfg.patch_size}" if self.tiles else
                             f"embedding 'patch': image_size={cfg.image_size} + 2·padding={cfg.padding} is smaller "
                             f"than patch_size={cfg.patch_size}")
        self.proj = nn.Conv2d(cfg.channels, cfg.dim_model, cfg.patch_size, stride=self.stride, padding=cfg.padding)
        self.position = None
        if cfg.positions:
            side = _side(cfg.image_size, cfg.patch_size, self.stride, cfg.padding)
            self.position = nn.Parameter(torch.randn(side * side, cfg.dim_model) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, H·H, C) sequence as (B, C, H, H) images."""
        B, L, C = x.shape
        side = math.isqrt(L)
        if C != self.cfg.channels:
            raise ValueError(f"embedding 'patch' expects sequences (B, L, channels={self.cfg.channels}), "
                             f"got {tuple(x.shape)}")
        if side * side != L:
            raise ValueError(f"embedding 'patch' reads a sequence as a square grid: its length L={L} is not a "
                             f"square (got {tuple(x.shape)})")
        return x.transpose(1, 2).reshape(B, C, side, side)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) float (or (B, H·H, C) with ``square_sequences``) -> (B, L, dim_model)."""
        cfg = self.cfg
        if not images.is_floating_point():
            raise TypeError(f"embedding 'patch' takes float images (B, C, H, W), got {images.dtype}")
        if cfg.square_sequences and images.dim() == 3:
            images = self._grid(images)
        if images.dim() != 4 or images.shape[1] != cfg.channels:
            also = f" or sequences (B, L, {cfg.channels})" if cfg.square_sequences else ""
            raise ValueError(f"embedding 'patch' expects images (B, {cfg.channels}, H, W){also}, "
                             f"got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if self.tiles and (H % cfg.patch_size or W % cfg.patch_size):
            raise ValueError(f"embedding 'patch': image size {H}x{W} is not a multiple of patch_size={cfg.patch_size}")
        if min(H, W) + 2 * cfg.padding < cfg.patch_size:
            raise ValueError(f"embedding 'patch': image size {H}x{W} (+ 2·padding={cfg.padding}) is smaller than "
                             f"patch_size={cfg.patch_size}")
        if self.position is not None and (H, W) != (cfg.image_size, cfg.image_size):
            raise ValueError(f"embedding 'patch' with positions expects {cfg.image_size}x{cfg.image_size} images, "
                             f"got {H}x{W}")
        x = self.proj(images).flatten(2).transpose(1, 2)
        if self.position is not None:
            x = x + self.position.to(x.dtype)
        return self.drop(x)
