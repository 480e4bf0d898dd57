"""Which attention each block of a built model runs, and which path ``masked_attention`` takes there.

``python -m blockzoo.info model=gpt_small_hybrid`` prints it: one forward of a batch of the run's task,
watching each block's attention mechanism. A mechanism that computes its own attention (linformer, favor ...)
never calls ``masked_attention`` and says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from blockzoo import ops
from blockzoo.layer_pattern import part_summary
from blockzoo.ops import backend

OP = "masked_attention"
NOT_CALLED = "-"  # recorded before each mechanism runs: still there after it, the mechanism did not call the op


@dataclass(frozen=True)
class LayerPath:
    """One attention of a block: its module name, its config in short and the path its call took."""

    module: str
    attention: str
    path: str

    def line(self) -> str:
        return f"  {self.module:<30} {self.attention:<36} {self.path}"


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, mechanism) of every attention mechanism of the model's blocks, in order."""
    return [(name, module) for name, module in model.named_modules()
            if name.endswith(("self_attn.attention", "cross_attn.attention"))]


def layer_paths(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[LayerPath]:
    """Run ``model.loss(batch)`` once without gradients and report each attention mechanism's path."""
    seen: dict[str, str] = {}
    handles = []
    previous = ops.last_path(OP)

    def before(*_: Any) -> None:
        backend.record_path(OP, NOT_CALLED)

    def after(name: str) -> Any:
        def hook(*_: Any) -> None:  # returns None: the output stays the mechanism's
            seen.setdefault(name, ops.last_path(OP) or NOT_CALLED)
        return hook

    for name, module in attention_modules(model):
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model.loss(batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        if previous is not None:
            backend.record_path(OP, previous)
    out = []
    for name, module in attention_modules(model):
        cfg: Any = module.cfg
        summary = part_summary("attention", {k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
        path = seen.get(name, "not run")
        path = "own computation (no masked_attention)" if path == NOT_CALLED else f"masked_attention: {path}"
        out.append(LayerPath(name, summary, path))
    return out
