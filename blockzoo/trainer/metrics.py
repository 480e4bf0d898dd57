"""metrics.jsonl (one JSON object per line), throughput, MFU and a run's own peak memory."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import math
import os
import resource
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blockzoo.ops.backend import BlockzooWarning

METRICS_FILE = "metrics.jsonl"
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


class MetricsWriter:
    """Appends one JSON line per call to ``folder/metrics.jsonl`` (only where ``enabled``: rank 0)."""

    def __init__(self, folder: Path, enabled: bool):
        self.path = Path(folder) / METRICS_FILE
        self.enabled = enabled

    def start(self, resume_step: int | None, source: Path | None = None) -> None:
        """A fresh file, or (resuming) the lines of steps up to the checkpoint's from ``source`` (default: this
        folder), replaced atomically so that a kill leaves the old file or the new one, never a truncated one."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = []
        source = Path(source or self.path.parent)
        if resume_step is not None and (source / METRICS_FILE).is_file():
            keep = [r for r in read_metrics(source) if not r.get("final") and r["step"] <= resume_step]
        tmp = self.path.with_name(f".{METRICS_FILE}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The records of ``folder/metrics.jsonl``. A torn last line (a kill mid-write) is dropped with a warning;
    a bad line elsewhere raises ValueError naming it."""
    path = Path(folder) / METRICS_FILE
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    records = []
    for i, line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i != lines[-1][0]:
                raise ValueError(f"{path}:{i}: not a JSON record ({e})") from None
            warnings.warn(f"{path}:{i}: dropped a torn last line (a run killed while writing it): {line[:80]!r}",
                          BlockzooWarning)
    return records


def flops_per_token(num_params: int, num_layers: int, dim_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N for the weights plus 12 L d T for attention scores (Kaplan et al.)."""
    return 6.0 * num_params + 12.0 * num_layers * dim_model * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of this GPU, when known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


class PeakMemory:
    """One run's peak memory, not the process's (a sweep's jobs share a process, and memory an earlier job
    left stays resident): how far memory rose above its level at the run's start. On CUDA, memory held by
    tensors (``max_memory_allocated``); on the CPU, the resident set (``VmHWM`` reset through
    ``/proc/self/clear_refs``, after returning freed heap memory to the system)."""

    def __init__(self, device: torch.device):
        self.device = device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.start = torch.cuda.memory_allocated(device)
            return
        _release_free_heap()
        self.start = _resident_kib("VmRSS")
        with contextlib.suppress(OSError):  # Linux: writing 5 resets the peak resident set size (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")

    @property
    def kind(self) -> str:
        """What the figure measures: 'cuda_allocated' or 'cpu_resident'."""
        return "cuda_allocated" if self.device.type == "cuda" else "cpu_resident"

    def mib(self) -> float:
        """The peak's rise above the start, in MiB."""
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        return max(_resident_kib("VmHWM") - self.start, 0) / 1024


def _resident_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (elsewhere than Linux: the peak from getrusage)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _release_free_heap() -> None:
    """Give memory that freed tensors left in the C heap back to the system (glibc), so that it does not
    count as resident at the start of the next run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


@dataclass
class Throughput:
    """Tokens and seconds spent in training steps (evaluation and checkpoints excluded)."""

    tokens: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def merge(self, other: "Throughput") -> None:
        self.add(other.tokens, other.seconds)

    def rate(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None
