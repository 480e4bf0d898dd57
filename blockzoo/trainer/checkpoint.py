"""Checkpoints: weights + config through ``blockzoo.save``, plus optimizer, scheduler, RNG and step state, and a
manifest with every file's size and sha256. Saved unsharded, so any strategy (or a plain ``blockzoo.load``) reads them.

In a run folder:

    checkpoint/             the newest checkpoint
    checkpoint.previous/    the one before it: resume falls back to it when the newest fails its checksums
    .checkpoint.tmp-*/      a checkpoint being written; complete once its manifest is in it
    .checkpoint.trash-*/    an old checkpoint being deleted

A new checkpoint is written whole into a temporary folder, then published by renames: the previous one to the
trash, the newest to ``checkpoint.previous``, the new one to ``checkpoint``; then the trash is deleted. A kill
at any instruction leaves every complete checkpoint whole; :func:`recover`, at the next start, finishes an
interrupted publication (a complete temporary checkpoint newer than ``checkpoint/``) and removes the leftovers.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from blockzoo.api import CONFIG_FILE, WEIGHTS_FILE, build_model, save
from blockzoo.ops.backend import BlockzooWarning
from blockzoo.trainer.distributed import DistEnv

STATE_FILE = "training_state.pt"
MANIFEST_FILE = "manifest.json"
LATEST = "checkpoint"
PREVIOUS = "checkpoint.previous"
TMP_PREFIX = ".checkpoint.tmp-"
TRASH_PREFIX = ".checkpoint.trash-"
REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, STATE_FILE)
PREFIX = "model."  # the model's place inside the training module
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class CorruptCheckpointError(ValueError):
    """A checkpoint folder whose files do not match its manifest (or that has none); the message names the file."""


# ---------------------------------------------------------------------------------------------
# Training state
# ---------------------------------------------------------------------------------------------
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


def save_checkpoint(run_dir: Path, module: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, step: int, env: DistEnv) -> nn.Module | None:
    """Write ``run_dir/checkpoint`` (weights, config, training state, manifest) crash-safely; call on every rank.

    Returns the unsharded model on rank 0 (None elsewhere)."""
    rng = env.gather_objects(rng_state(env.device))
    optim = get_optimizer_state_dict(module, optimizer, options=FULL)
    plain = full_model(module, model, env)
    if env.is_main:
        state = {"step": step, "optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rng,
                 "world_size": env.world_size}
        write_checkpoint(run_dir, plain, state)
    env.barrier()
    return plain


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


def saved_model_config(folder: Path) -> dict[str, Any]:
    """The model config a checkpoint was saved with."""
    return yaml.safe_load((folder / CONFIG_FILE).read_text())


# ---------------------------------------------------------------------------------------------
# Writing: a whole temporary folder, then renames
# ---------------------------------------------------------------------------------------------
def write_checkpoint(run_dir: Path, model: nn.Module, state: dict[str, Any]) -> Path:
    """Write a complete checkpoint of ``model`` and ``state`` and publish it as ``run_dir/checkpoint``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=run_dir)) / LATEST
    save(model, staged, extra={STATE_FILE: lambda path: torch.save(state, path)})
    write_manifest(staged, state["step"])
    publish(run_dir, staged)
    return run_dir / LATEST


def write_manifest(folder: Path, step: int) -> None:
    """``manifest.json``: the step and each file's size and sha256; written last, it marks the folder complete."""
    files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in sorted(folder.iterdir())}
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"step": step, "files": files}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    rename(tmp, folder / MANIFEST_FILE)


def publish(run_dir: Path, staged: Path) -> None:
    """Make the complete checkpoint ``staged`` the newest, the newest the previous one; delete the one before."""
    latest, previous = run_dir / LATEST, run_dir / PREVIOUS
    if latest.exists():
        if previous.exists():
            rename(previous, Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=run_dir)) / PREVIOUS)
        rename(latest, previous)
    rename(staged, latest)
    remove_leftovers(run_dir)


def rename(src: Path, dst: Path) -> None:
    """An atomic rename, made durable by syncing the folder that holds ``dst``."""
    os.rename(src, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary and trash folders killed writes left."""
    for path in sorted(run_dir.glob(TMP_PREFIX + "*")) + sorted(run_dir.glob(TRASH_PREFIX + "*")):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Reading: which checkpoint is whole
# ---------------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(folder: Path) -> int:
    """The step of the checkpoint in ``folder`` once every file matches its manifest; else CorruptCheckpointError
    naming the file and what is wrong."""
    manifest = read_manifest(folder)
    for name in REQUIRED_FILES:
        if name not in manifest["files"]:
            raise CorruptCheckpointError(f"{folder / MANIFEST_FILE}: lists no {name}")
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise CorruptCheckpointError(f"{path}: missing")
        if path.stat().st_size != expected["bytes"]:
            raise CorruptCheckpointError(f"{path}: {path.stat().st_size} bytes, the manifest says "
                                         f"{expected['bytes']} (truncated or overwritten)")
        if sha256(path) != expected["sha256"]:
            raise CorruptCheckpointError(f"{path}: sha256 differs from the manifest's (the file changed after it "
                                         "was written)")
    return int(manifest["step"])


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise CorruptCheckpointError(f"{path}: missing (an incomplete write, or a checkpoint saved without checksums)")
    try:
        manifest = json.loads(path.read_text())
        return {"step": int(manifest["step"]), "files": dict(manifest["files"])}
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def staged_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints left in temporary folders by a kill during publication, newest first."""
    found = []
    for staged in run_dir.glob(f"{TMP_PREFIX}*/{LATEST}"):
        try:
            found.append((verify(staged), staged))
        except CorruptCheckpointError:
            continue  # an incomplete write: removed with the leftovers
    return sorted(found, reverse=True)


def recover(run_dir: Path) -> None:
    """Finish a publication a kill interrupted (a complete temporary checkpoint newer than ``checkpoint/``), then
    remove the leftovers of killed writes. Call before reading the run's checkpoints."""
    staged = staged_checkpoints(run_dir)
    if staged and staged[0][0] > latest_step(run_dir):
        discard_damaged_latest(run_dir)
        publish(run_dir, staged[0][1])
    remove_leftovers(run_dir)


def latest_step(run_dir: Path) -> int:
    """The step of a whole ``checkpoint/``, or -1."""
    try:
        return verify(run_dir / LATEST)
    except CorruptCheckpointError:
        return -1


def discard_damaged_latest(run_dir: Path) -> None:
    """Move a damaged ``checkpoint/`` to the trash, so that publishing keeps ``checkpoint.previous/``."""
    if (run_dir / LATEST).exists() and latest_step(run_dir) < 0:
        rename(run_dir / LATEST, Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=run_dir)) / LATEST)


def resumable(run_dir: Path) -> Path | None:
    """The newest whole checkpoint of ``run_dir`` (``checkpoint/``, else ``checkpoint.previous/`` with a warning
    naming what is wrong with the newest), or None when the run has none. Raises CorruptCheckpointError when
    every checkpoint it has is damaged."""
    problems = []
    for folder in (run_dir / LATEST, run_dir / PREVIOUS):
        if not folder.exists():
            continue
        try:
            verify(folder)
        except CorruptCheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"checkpoint damaged: {problems[0]}; resuming from {folder} instead", BlockzooWarning)
        return folder
    if problems:
        raise CorruptCheckpointError("no whole checkpoint to resume: " + "; ".join(problems))
    return None
