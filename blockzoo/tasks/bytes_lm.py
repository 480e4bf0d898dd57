"""Byte-level language modelling over Python's own standard-library sources (always present, no download)."""
from __future__ import annotations

import functools
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

from blockzoo.config import TaskConfig
from blockzoo.registry import register_task
from blockzoo.tasks.base import Task, lm_format

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings"}  # encodings: code-page tables


@dataclass
class BytesLMConfig(TaskConfig):
    """Config of the standard-library byte corpus."""

    max_bytes: int = field(default=4_000_000, metadata={"help": "read at most this many bytes of source"})
    val_every: int = field(default=20, metadata={"help": "every n-th file (sorted) goes to validation"})


def stdlib_files(root: Path) -> list[Path]:
    """The standard library's .py files under ``root``, sorted, without tests, site-packages and code-page tables."""
    files = (p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@functools.lru_cache(maxsize=4)
def load_corpus(root: str, max_bytes: int, val_every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) uint8 tensors. File i (sorted) belongs to val when i % val_every == val_every - 1; each
    split reads its files in order until it holds its share of ``max_bytes`` (1 / val_every for val)."""
    budget = {"val": max_bytes // val_every}
    budget["train"] = max_bytes - budget["val"]
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    for i, path in enumerate(stdlib_files(Path(root))):
        split = "val" if i % val_every == val_every - 1 else "train"
        if budget[split] > 0:
            data = path.read_bytes()[: budget[split]]
            budget[split] -= len(data)
            parts[split].append(data)
        if budget["train"] <= 0 and budget["val"] <= 0:
            break
    if not parts["train"] or not parts["val"]:
        raise ValueError(f"too few Python sources under {root} for a train/val split (task bytes_lm reads the "
                         "standard library's .py files)")
    train, val = (bytearray(b"\n\n".join(parts[s])) for s in ("train", "val"))
    return torch.frombuffer(train, dtype=torch.uint8), torch.frombuffer(val, dtype=torch.uint8)


@register_task("bytes_lm", BytesLMConfig)
class BytesLM(Task):
    """Next-byte prediction on the standard library's Python sources; vocab 256.

    Files are sorted by path; every ``val_every``-th goes to validation (5% of the bytes by default). A batch
    is ``batch_size`` windows of ``seq_len + 1`` bytes at random offsets.
    """

    vocab_size = 256

    def __init__(self, cfg: BytesLMConfig):
        super().__init__(cfg)
        if cfg.max_bytes < 1 or cfg.val_every < 2:
            raise ValueError(f"task.max_bytes must be >= 1 and task.val_every >= 2, got {cfg.max_bytes}, {cfg.val_every}")
        self.data = dict(zip(("train", "val"), load_corpus(sysconfig.get_paths()["stdlib"], cfg.max_bytes,
                                                           cfg.val_every)))
        for split, data in self.data.items():
            if len(data) <= cfg.seq_len + 1:
                raise ValueError(f"task bytes_lm: the {split} split has {len(data)} bytes, fewer than "
                                 f"task.seq_len + 1 = {cfg.seq_len + 1}; raise task.max_bytes")

    def make_batch(self, gen: torch.Generator, split: str, batch_size: int) -> dict[str, torch.Tensor]:
        data, n = self.data[split], self.cfg.seq_len + 1
        offsets = torch.randint(0, len(data) - n + 1, (batch_size, 1), generator=gen)
        full = data[offsets + torch.arange(n)].long()
        return lm_format(full, torch.ones(batch_size, n - 1, dtype=torch.bool))

    def decode(self, tokens: list[int]) -> str:
        return bytes(tokens).decode("utf-8", errors="replace")

    def sample_prompt(self) -> list[int]:
        val = bytes(self.data["val"][:100_000].tolist())
        start = val.find(b"\ndef ") + 1
        return list(val[start:start + 24])
