"""Validation loss and accuracy over fixed validation batches, and the end-of-run generated sample."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from blockzoo.tasks import IGNORE_INDEX, Task
from blockzoo.trainer.distributed import DistEnv


@torch.no_grad()
def evaluate(module: nn.Module, task: Task, env: DistEnv, batches: int, batch_size: int,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[float, float]:
    """(mean validation loss, accuracy over predicted positions) on validation batches 0..batches-1."""
    module.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    counts = torch.zeros(2, dtype=torch.float64, device=env.device)  # correct, predicted
    try:
        for index in range(batches):
            batch = env.shard(task.batch("val", index, batch_size))
            with autocast():
                loss_sum += module(batch).double()
                predicted, target = module(batch, predictions=True)
            keep = target != IGNORE_INDEX
            counts += torch.stack([(predicted.eq(target) & keep).sum(), keep.sum()]).double()
    finally:
        module.train()
        if hasattr(module, "reshard"):  # FSDP2 leaves the root unsharded after a forward with no backward
            module.reshard()
    loss = env.mean(loss_sum).item() / batches
    correct, total = env.sum(counts).tolist()
    return loss, correct / max(total, 1.0)


@torch.no_grad()
def sample_text(model: nn.Module, task: Task, tokens: int, seed: int, device: torch.device) -> str | None:
    """``tokens`` bytes generated after the task's prompt (None when the task or model cannot sample)."""
    prompt = task.sample_prompt()
    if prompt is None or tokens <= 0 or getattr(model, "generation", None) != "lm":
        return None
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = model.generate(torch.tensor([prompt], device=device), tokens, temperature=0.8, generator=gen,
                         use_cache=model.decodes_with_cache())
    return task.decode(out[0].tolist())
