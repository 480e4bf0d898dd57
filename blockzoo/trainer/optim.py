"""AdamW (fused on CUDA) with decay on matrices only, and a warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from blockzoo.config import TrainerConfig


def build_optimizer(module: nn.Module, cfg: TrainerConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on parameters with 2+ dims (not biases, norms' scales)."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = True if device.type == "cuda" else None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)


def lr_factor(step: int, cfg: TrainerConfig) -> float:
    """Multiplier of the peak lr for optimizer step ``step + 1``: linear warm-up, then cosine to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
