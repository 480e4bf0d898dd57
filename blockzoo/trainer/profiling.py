"""One profiled training step (``trainer.profile_step``): where its time went, communication included.

The summary (``profile.json`` in the run folder, one entry per rank) gives the step's wall time, the
time collectives ran (NCCL kernels on the GPU; gloo/c10d collectives on the CPU), the part of it that
no compute overlapped (exposed communication), and the heaviest kernels.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.profiler import ProfilerActivity, profile

COMM_MARKERS = ("nccl", "gloo", "c10d::", "all_reduce", "allreduce", "all_gather", "allgather",
                "reduce_scatter", "broadcast_")


def is_communication(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in COMM_MARKERS)


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by half-open intervals (start, end)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def summarize(events: list[tuple[str, float, float]], wall_ms: float, top: int = 10) -> dict[str, Any]:
    """Summary of one step from (name, start_us, end_us) of its device kernels (or CPU collectives)."""
    comm = [(s, e) for n, s, e in events if is_communication(n)]
    compute = [(s, e) for n, s, e in events if not is_communication(n)]
    comm_us = union_length(comm)
    # exposed = covered by communication and by no compute: |comm ∪ compute| - |compute|
    exposed_us = union_length(comm + compute) - union_length(compute)
    by_name: dict[str, float] = {}
    for name, start, end in events:
        by_name[name] = by_name.get(name, 0.0) + (end - start)
    heaviest = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
    return {"step_ms": round(wall_ms, 3), "communication_ms": round(comm_us / 1e3, 3),
            "exposed_communication_ms": round(exposed_us / 1e3, 3),
            "communication_share": round(comm_us / 1e3 / wall_ms, 4) if wall_ms else None,
            "exposed_communication_share": round(exposed_us / 1e3 / wall_ms, 4) if wall_ms else None,
            "compute_ms": round(union_length(compute) / 1e3, 3),
            "heaviest": [{"name": n[:120], "ms": round(us / 1e3, 3)} for n, us in heaviest]}


def timed_events(prof: profile, device: torch.device) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of the GPU kernels on CUDA; of the collective ops on the CPU."""
    out = []
    for evt in prof.events():
        on_device = evt.device_type == torch.autograd.DeviceType.CUDA
        if (device.type == "cuda" and on_device) or (device.type != "cuda" and is_communication(evt.name)):
            out.append((evt.name, float(evt.time_range.start), float(evt.time_range.end)))
    return out


@contextlib.contextmanager
def profiled_step(device: torch.device, rank: int, out_dir: Path, gather) -> Iterator[None]:
    """Profile the enclosed step; rank 0 writes every rank's summary to ``out_dir/profile.json``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        tick = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - tick) * 1e3
    summaries = gather({"rank": rank, **summarize(timed_events(prof, device), wall_ms)})
    if rank == 0:
        (out_dir / "profile.json").write_text(json.dumps({"ranks": summaries}, indent=1) + "\n")
