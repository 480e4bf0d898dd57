"""Base class of embedded tasks: deterministic batch generators seeded by (seed, split, index)."""
from __future__ import annotations

import abc
import hashlib

import torch

from blockzoo.config import TaskConfig

IGNORE_INDEX = -100
SPLITS = ("train", "val")


class Task(abc.ABC):
    """A deterministic batch generator.

    ``batch(split, index, batch_size)`` always returns the same tensors for the same arguments
    (and config), so a resumed run sees the same data. Every batch carries the LM format
    (``tokens``, ``targets`` with -100 where nothing is predicted) plus whichever other formats
    the task supports (classification: ``label``, ``padding``; seq2seq: ``src``, ``tgt``,
    ``tgt_targets``). ``num_classes`` is 0 for tasks without a classification format.
    """

    vocab_size: int = 0
    num_classes: int = 0

    def __init__(self, cfg: TaskConfig):
        if cfg.seq_len < 2:
            raise ValueError(f"task.seq_len must be >= 2, got {cfg.seq_len}")
        self.cfg = cfg

    def generator(self, split: str, index: int) -> torch.Generator:
        """A CPU generator seeded from (task name, seed, split, index)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if index < 0:
            raise ValueError(f"batch index must be >= 0, got {index}")
        key = f"{self.cfg.name}:{self.cfg.seed}:{split}:{index}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)
        return torch.Generator().manual_seed(seed)

    def batch(self, split: str, index: int, batch_size: int) -> dict[str, torch.Tensor]:
        """The batch number ``index`` of ``split`` with ``batch_size`` sequences."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return self.make_batch(self.generator(split, index), split, batch_size)

    @abc.abstractmethod
    def make_batch(self, gen: torch.Generator, split: str, batch_size: int) -> dict[str, torch.Tensor]:
        """One batch drawn from ``gen`` (seeded by split and index)."""

    def decode(self, tokens: list[int]) -> str:
        """Readable text for a token sequence (generated samples)."""
        return " ".join(str(t) for t in tokens)

    def sample_prompt(self) -> list[int] | None:
        """A prompt for the end-of-run generated sample, or None when sampling makes no sense."""
        return None


def lm_format(full: torch.Tensor, predict: torch.Tensor) -> dict[str, torch.Tensor]:
    """Next-token LM pair from ``full`` (B, T+1): tokens = full[:, :-1], targets = full[:, 1:]
    with -100 wherever ``predict`` (B, T, bool, aligned with targets) is False."""
    targets = full[:, 1:].masked_fill(~predict, IGNORE_INDEX)
    return {"tokens": full[:, :-1].contiguous(), "targets": targets.contiguous()}
