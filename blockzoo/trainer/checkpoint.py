"""Checkpoints: weights + config through ``blockzoo.save``, plus optimizer, scheduler, RNG and step state,
all in one atomic folder write. Saved unsharded, so any strategy (or a plain ``blockzoo.load``) reads them."""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from blockzoo.api import WEIGHTS_FILE, build_model, save
from blockzoo.ops.backend import BlockzooWarning
from blockzoo.trainer.distributed import DistEnv

STATE_FILE = "training_state.pt"
PREFIX = "model."  # the model's place inside the training module
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python and torch (CPU and this CUDA device) generator states."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def full_model(module: nn.Module, model: nn.Module, env: DistEnv) -> nn.Module | None:
    """An unsharded model with the trained weights on rank 0 (None elsewhere); collective under FSDP."""
    if env.strategy != "fsdp":
        return model
    weights = get_model_state_dict(module, options=FULL)
    if not env.is_main:
        return None
    with torch.random.fork_rng(devices=[]):  # building the copy must not move the training RNG
        copy = build_model(model.to_config())
    copy.load_state_dict({k.removeprefix(PREFIX): v for k, v in weights.items()})
    return copy


def save_checkpoint(folder: Path, module: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, step: int, env: DistEnv) -> nn.Module | None:
    """Write ``folder`` (model.safetensors, config.yaml, training_state.pt) atomically; call on every rank.

    Returns the unsharded model on rank 0 (None elsewhere)."""
    rng = env.gather_objects(rng_state(env.device))
    optim = get_optimizer_state_dict(module, optimizer, options=FULL)
    plain = full_model(module, model, env)
    if env.is_main:
        state = {"step": step, "optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rng,
                 "world_size": env.world_size}
        save(plain, folder, extra={STATE_FILE: lambda path: torch.save(state, path)})
    env.barrier()
    return plain


def has_checkpoint(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def load_checkpoint(folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    env: DistEnv) -> int:
    """Restore weights, optimizer, scheduler and this rank's RNG from ``folder``; return the step reached."""
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    weights = {PREFIX + k: v for k, v in load_file(str(folder / WEIGHTS_FILE)).items()}
    set_model_state_dict(module, weights, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(module, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    if len(rng) != env.world_size and env.is_main:
        warnings.warn(f"{folder} was saved by {len(rng)} processes and this run has {env.world_size}: training "
                      "continues, but dropout draws (and so losses) will differ from the original run", BlockzooWarning)
    set_rng_state(rng[env.rank % len(rng)], env.device)
    return int(state["step"])
