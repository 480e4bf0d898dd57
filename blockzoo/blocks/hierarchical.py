"""Hierarchical MetaFormer image classifier (Yu et al., 2022, "MetaFormer Is Actually What You Need for Vision")."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.blocks.aux_loss import auxiliary_losses
from blockzoo.blocks.block import deepnorm_constants
from blockzoo.blocks.embedding.patch import PatchEmbedding
from blockzoo.blocks.init import init_weights
from blockzoo.blocks.model import TransformerModel
from blockzoo.config import ModelConfig, config_to_dict
from blockzoo.registry import register_model, registry

PART_DEFAULTS = {"attention": {"name": "pooling", "grid": True}, "feedforward": {"name": "mlp"},
                 "norm": {"name": "layer_norm"}, "embedding": {"name": "patch"}}


@dataclass
class HierarchicalConfig(ModelConfig):
    """Config of the hierarchical classifier. Stage lists replace ``dim_model``, ``num_layers`` and
    ``num_heads``; ``vocab_size``, ``max_seq_len`` and ``tie_embeddings`` are not used (image input)."""

    image_size: int = field(default=32, metadata={"help": "image side (square images)"})
    channels: int = field(default=3, metadata={"help": "image channels"})
    num_classes: int = field(default=0, metadata={"help": "classes (set from the task when 0)"})
    stage_dims: List[int] = field(default_factory=lambda: [32, 64, 128], metadata={"help": "width of each stage"})
    stage_depths: List[int] = field(default_factory=lambda: [1, 1, 2], metadata={"help": "blocks in each stage"})
    stage_heads: List[int] = field(default_factory=lambda: [1, 2, 4], metadata={"help": "heads in each stage"})
    stride: int = field(default=2, metadata={"help": "downsampling between stages (patch merge, kernel = stride)"})


@register_model("hierarchical", HierarchicalConfig)
class HierarchicalClassifier(nn.Module):
    """Stages of MetaFormer blocks on a shrinking token grid, mean-pooled into a linear classifier.

    Stage 0 embeds the images (B, C, H, W) with ``embedding`` (default ``patch``); each later
    stage starts with a patch embedding of kernel = stride = ``stride`` over the previous
    stage's token grid (downsampling by ``stride`` per side and widening to the stage's dim).
    Each stage is ``stage_depths[i]`` encoder blocks whose token mixer is any registered
    attention (default ``pooling`` with ``grid: true``, as PoolFormer) and feedforward any
    registered feedforward. Batches: ``images`` (B, C, H, W) float and ``label`` (B,).
    ``stage_dims`` / ``stage_depths`` / ``stage_heads`` set the shape; the inherited
    dim_model, num_layers, num_heads, vocab_size, max_seq_len and tie_embeddings are not used.
    """

    def __init__(self, cfg: HierarchicalConfig):
        super().__init__()
        self.cfg = cfg
        for part, default in PART_DEFAULTS.items():
            if getattr(cfg, part) is None:
                setattr(cfg, part, dict(default))
        if cfg.attention_pattern is not None:
            raise ValueError("model.attention_pattern: the hierarchical model takes no per-layer pattern (its "
                             "stages share the attention and feedforward); leave it null")
        dims, depths, heads = list(cfg.stage_dims), list(cfg.stage_depths), list(cfg.stage_heads)
        if not dims or not len(dims) == len(depths) == len(heads):
            raise ValueError(f"model.stage_dims, stage_depths and stage_heads must be non-empty and of equal length, "
                             f"got {dims}, {depths}, {heads}")
        if cfg.num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2 (set it, or compose with task=images), "
                             f"got {cfg.num_classes}")
        if cfg.stride < 1:
            raise ValueError(f"model.stride must be >= 1, got {cfg.stride}")
        stem = registry("embedding").config(cfg.embedding, path="model.embedding")
        if not issubclass(registry("embedding").get(stem.name).cls, PatchEmbedding):
            raise ValueError(f"model 'hierarchical' needs an image embedding such as 'patch', got {stem.name!r}")
        self.embedding = registry("embedding").build(
            cfg.embedding, path="model.embedding", dim_model=dims[0], channels=cfg.channels,
            image_size=cfg.image_size, dropout=cfg.dropout)
        patch = self.embedding.cfg.patch_size
        grid = cfg.image_size // patch
        if grid < 1 or cfg.image_size % patch or grid % cfg.stride ** (len(dims) - 1):
            raise ValueError(f"model 'hierarchical': image_size={cfg.image_size} must divide into patch_size={patch} "
                             f"and then by stride={cfg.stride} between each of its {len(dims)} stages")
        sides = [grid // cfg.stride ** i for i in range(len(dims))]
        alpha, beta = deepnorm_constants(sum(depths))
        self.downsample = nn.ModuleList(
            registry("embedding").build({"name": "patch", "patch_size": cfg.stride, "positions": False},
                                        path=f"model.downsample.{i}", channels=dims[i], dim_model=dims[i + 1])
            for i in range(len(dims) - 1))
        self.stages = nn.ModuleList(
            nn.ModuleList(self._block(dims[i], heads[i], sides[i] ** 2, alpha, sum(depths[:i]) + j)
                          for j in range(depths[i]))
            for i in range(len(dims)))
        self.norm = registry("norm").build(cfg.norm, path="model.norm", dim=dims[-1])
        self.classifier = nn.Linear(dims[-1], cfg.num_classes)
        init_weights(self, cfg.init, sum(depths), dims[0], beta)

    def _block(self, dim: int, heads: int, tokens: int, alpha: float, index: int) -> nn.Module:
        cfg = self.cfg
        return registry("block").build(
            dict(name="encoder", dim_model=dim, num_heads=heads, num_kv_heads=cfg.num_kv_heads, residual=cfg.residual,
                 dropout=cfg.dropout, qkv=cfg.qkv, bias=cfg.bias, causal=False, deepnorm_alpha=alpha,
                 max_seq_len=tokens, attention=cfg.attention, feedforward=cfg.feedforward, norm=cfg.norm),
            path=f"model.blocks.{index}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) float -> logits (B, num_classes)."""
        x = self.embedding(images)
        h, w = (s // self.embedding.cfg.patch_size for s in images.shape[-2:])
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsample[i - 1](x.transpose(1, 2).reshape(x.shape[0], -1, h, w))
                h, w = h // self.cfg.stride, w // self.cfg.stride
            for block in stage:
                x = block(x)
        return self.classifier(self.norm(x).mean(1))

    def to_config(self) -> dict[str, Any]:
        """The plain-dict config that rebuilds this model."""
        return config_to_dict(self.cfg)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of ``batch['images']`` against ``batch['label']`` (+ auxiliary losses)."""
        TransformerModel.require(batch, "images", "label", model="hierarchical")
        return F.cross_entropy(self(batch["images"]).float(), batch["label"]) + auxiliary_losses(self)

    def predictions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted classes, labels) for accuracy."""
        return self(batch["images"]).argmax(-1), batch["label"]
