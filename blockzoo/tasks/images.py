"""Synthetic image classification: oriented bars, one orientation per class (a learnable toy task for image models)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from blockzoo.config import TaskConfig
from blockzoo.registry import register_task
from blockzoo.tasks.base import Task


@dataclass
class ImagesConfig(TaskConfig):
    """Config of the oriented-bars task (``seq_len`` is not used)."""

    image_size: int = field(default=32, metadata={"help": "image side in pixels"})
    channels: int = field(default=3, metadata={"help": "image channels"})
    num_classes: int = field(default=4, metadata={"help": "orientations to tell apart"})
    noise: float = field(default=0.5, metadata={"help": "std of the Gaussian pixel noise"})


@register_task("images", ImagesConfig)
class Images(Task):
    """Class c is a bar at angle c·π/num_classes (± a quarter of the spacing) through a random point.

    Each image: a soft bar of random width and random per-channel colour on a zero background,
    plus Gaussian noise of std ``noise``. Batches: ``images`` (B, C, H, W) float32 and ``label``
    (B,) int64; deterministic in (seed, split, index). No token format (``vocab_size`` is 0).
    """

    def __init__(self, cfg: ImagesConfig):
        super().__init__(cfg)
        if cfg.image_size < 4 or cfg.channels < 1 or cfg.num_classes < 2 or cfg.noise < 0:
            raise ValueError(f"task 'images' needs image_size >= 4, channels >= 1, num_classes >= 2, noise >= 0; got "
                             f"{cfg.image_size}, {cfg.channels}, {cfg.num_classes}, {cfg.noise}")
        self.num_classes = cfg.num_classes

    def make_batch(self, gen: torch.Generator, split: str, batch_size: int) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        B, S, K = batch_size, cfg.image_size, cfg.num_classes
        label = torch.randint(0, K, (B,), generator=gen)
        jitter = (torch.rand(B, generator=gen) - 0.5) * (math.pi / K) / 2
        angle = label * (math.pi / K) + jitter
        centre = (torch.rand(B, 2, 1, 1, generator=gen) - 0.5) * (S / 2)
        width = 1.0 + torch.rand(B, 1, 1, generator=gen) * (S / 16)
        colour = 0.5 + torch.rand(B, cfg.channels, 1, 1, generator=gen)
        coords = torch.arange(S, dtype=torch.float32) - (S - 1) / 2
        y, x = torch.meshgrid(coords, coords, indexing="ij")
        # distance of each pixel from the line through the centre with direction (cos, sin)
        dist = ((y - centre[:, 1]) * angle.cos()[:, None, None] - (x - centre[:, 0]) * angle.sin()[:, None, None]).abs()
        bar = torch.exp(-(dist / width) ** 2)
        noise = torch.randn(B, cfg.channels, S, S, generator=gen) * cfg.noise
        return {"images": colour * bar[:, None] + noise, "label": label}
