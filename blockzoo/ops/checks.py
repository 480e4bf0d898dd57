"""Input checks shared by the ops: raise a clear error before any kernel launches."""
from __future__ import annotations

import torch


def check_tensor(name: str, t: object, *, dtypes: tuple[torch.dtype, ...] | None = None,
                 dim: int | None = None, min_dim: int | None = None) -> torch.Tensor:
    """Raise TypeError/ValueError unless ``t`` is a tensor of an allowed dtype and rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of {', '.join(map(str, dtypes))}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if min_dim is not None and t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(t.shape)}")
    return t


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise ValueError when the given tensors are not all on one device."""
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise ValueError("tensors on different devices: " + ", ".join(f"{n} on {d}" for n, d in devs.items()))


def check_broadcastable(name: str, mask: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> None:
    """Raise ValueError unless ``mask`` broadcasts to ``shape`` without growing it."""
    if mask.dim() > len(shape):
        raise ValueError(f"{name} of shape {tuple(mask.shape)} has more dims than the scores {tuple(shape)}")
    for m, s in zip(reversed(mask.shape), reversed(shape)):
        if m not in (1, s):
            raise ValueError(f"{name} of shape {tuple(mask.shape)} does not broadcast to {tuple(shape)}")


def check_mask_dtype(name: str, mask: torch.Tensor, like: torch.Tensor) -> None:
    """A mask is bool (True = keep) or a floating additive mask."""
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{name} must be bool (True = keep) or floating (additive), got {mask.dtype}")
    if mask.device != like.device:
        raise ValueError(f"{name} is on {mask.device} but the input is on {like.device}")


def check_targets(target: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Raise ValueError for a class index outside [0, vocab) that is not ``ignore_index`` (reads one bool
    back from the device: a device-side assert would poison a CUDA context instead of raising)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= vocab))
    if bad.any():
        value = int(target[bad][0])
        raise ValueError(f"target {value} is out of range [0, {vocab}) and is not ignore_index={ignore_index}")


FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
