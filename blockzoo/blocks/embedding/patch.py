"""Patch embedding for images (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words", ViT)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from blockzoo.config import EmbeddingConfig
from blockzoo.registry import register_embedding


@dataclass
class PatchConfig(EmbeddingConfig):
    """Config of the patch embedding (``vocab_size`` and ``max_seq_len`` are not used)."""

    patch_size: int = field(default=4, metadata={"help": "patch side: conv kernel = stride"})
    channels: int = field(default=3, metadata={"help": "image channels (set by the model)"})
    image_size: int = field(default=32, metadata={"help": "image side, sizes the position table (set by the model)"})
    positions: bool = field(default=True, metadata={"help": "add learned absolute positions"})


@register_embedding("patch", PatchConfig)
class PatchEmbedding(nn.Module):
    """Cuts images into non-overlapping patches and projects each to ``dim_model`` (+ learned positions).

    Input: float images (B, C, H, W), channels first, C = ``channels``, H and W multiples of
    ``patch_size`` (with ``positions``, H = W = ``image_size``). Output: (B, L, dim_model) with
    L = (H / p)·(W / p) patches in row-major order (row by row, left to right), the layout the
    grid mechanisms (``conv2d`` feedforward, grid attentions) read back as an (H/p, W/p) grid.
    Unlike the token embeddings it takes no token ids.
    """

    def __init__(self, cfg: PatchConfig):
        super().__init__()
        if cfg.patch_size < 1 or cfg.channels < 1 or cfg.dim_model < 1:
            raise ValueError(f"embedding 'patch' needs patch_size, channels and dim_model >= 1, got "
                             f"{cfg.patch_size}, {cfg.channels}, {cfg.dim_model}")
        if cfg.positions and (cfg.image_size < cfg.patch_size or cfg.image_size % cfg.patch_size):
            raise ValueError(f"embedding 'patch': image_size={cfg.image_size} must be a positive multiple of "
                             f"patch_size={cfg.patch_size}")
        self.cfg = cfg
        self.proj = nn.Conv2d(cfg.channels, cfg.dim_model, cfg.patch_size, stride=cfg.patch_size)
        self.position = None
        if cfg.positions:
            side = cfg.image_size // cfg.patch_size
            self.position = nn.Parameter(torch.randn(side * side, cfg.dim_model) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) float -> (B, (H/p)(W/p), dim_model)."""
        cfg = self.cfg
        if not images.is_floating_point():
            raise TypeError(f"embedding 'patch' takes float images (B, C, H, W), got {images.dtype}")
        if images.dim() != 4 or images.shape[1] != cfg.channels:
            raise ValueError(f"embedding 'patch' expects images (B, {cfg.channels}, H, W), got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(f"embedding 'patch': image size {H}x{W} is not a multiple of patch_size={cfg.patch_size}")
        if self.position is not None and (H, W) != (cfg.image_size, cfg.image_size):
            raise ValueError(f"embedding 'patch' with positions expects {cfg.image_size}x{cfg.image_size} images, "
                             f"got {H}x{W}")
        x = self.proj(images).flatten(2).transpose(1, 2)
        if self.position is not None:
            x = x + self.position.to(x.dtype)
        return self.drop(x)
