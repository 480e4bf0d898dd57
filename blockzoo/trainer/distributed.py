"""Process setup for single-process, DDP and FSDP2 runs (under torchrun), and the collectives the loop needs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from blockzoo.config import DEVICES, DIST_BACKENDS, STRATEGIES


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs and which slice of the global batch it takes."""

    strategy: str
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def shard(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's contiguous slice of a global batch, moved to the device."""
        size = next(iter(batch.values())).shape[0]
        if size % self.world_size:
            raise ValueError(f"trainer.batch_size={size} must be divisible by the world size {self.world_size}")
        per = size // self.world_size
        return {k: v[self.rank * per:(self.rank + 1) * per].to(self.device, non_blocking=True)
                for k, v in batch.items()}

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (a no-op in a single process)."""
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        return self.sum(value) / self.world_size

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is an error."""
    if name not in DEVICES:
        raise ValueError(f"trainer.device must be one of {DEVICES}, got {name!r}")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("trainer.device=cuda but no CUDA GPU is visible (torch.cuda.is_available() is False)")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup(strategy: str, device: str, dist_backend: str) -> DistEnv:
    """Check that this machine can run ``strategy``, start the process group, pick the device."""
    if strategy not in STRATEGIES:
        raise ValueError(f"trainer.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if dist_backend not in DIST_BACKENDS:
        raise ValueError(f"trainer.dist_backend must be one of {DIST_BACKENDS}, got {dist_backend!r}")
    world = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    if strategy == "single":
        if world > 1:
            raise ValueError(f"trainer.strategy=single but torchrun started {world} processes; use "
                             "trainer.strategy=ddp or trainer.strategy=fsdp")
        return DistEnv("single", 0, 1, resolve_device(device))
    if not launched_by_torchrun():
        raise ValueError(f"trainer.strategy={strategy} needs several processes: launch with "
                         f"`torchrun --nproc_per_node=N -m blockzoo.train trainer.strategy={strategy}`")
    if strategy == "fsdp" and world < 2:
        raise ValueError("trainer.strategy=fsdp with one process has nothing to shard; use "
                         "trainer.strategy=single, or torchrun --nproc_per_node=2 or more")
    local_rank = int(os.environ["LOCAL_RANK"])
    dev = resolve_device(device, local_rank)
    backend = dist_backend if dist_backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("trainer.dist_backend=nccl needs CUDA GPUs, and this run is on the CPU "
                         f"({'no GPU is visible' if not torch.cuda.is_available() else 'trainer.device=cpu'}); "
                         "use trainer.dist_backend=gloo")
    dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    return DistEnv(strategy, dist.get_rank(), dist.get_world_size(), dev)


def teardown(env: DistEnv) -> None:
    if env.distributed:
        dist.destroy_process_group()


def wrap(module: nn.Module, env: DistEnv, bf16: bool = False) -> nn.Module:
    """DDP or FSDP2 (``fully_shard`` on every block, then the root) around ``module``.

    In a bf16 run FSDP2 gathers bf16 parameters and reduces gradients in fp32
    (``MixedPrecisionPolicy``); the sharded master weights and the optimizer stay fp32."""
    if env.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if env.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
                  else MixedPrecisionPolicy())
        for stack in list(_block_stacks(module)):
            for block in stack:
                fully_shard(block, mp_policy=policy)
        fully_shard(module, mp_policy=policy)
    return module


def _block_stacks(module: nn.Module) -> Iterator[nn.ModuleList]:
    """The outermost ``nn.ModuleList``s (the block stacks), not descending into them."""
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            yield child
        else:
            yield from _block_stacks(child)
