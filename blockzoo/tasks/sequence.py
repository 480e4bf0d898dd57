"""Copy and sort: reproduce (or sort) a random symbol sequence; LM and seq2seq formats."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch

from blockzoo.config import TaskConfig
from blockzoo.registry import register_task
from blockzoo.tasks.base import Task, lm_format

PAD, SEP, FIRST_SYMBOL = 0, 1, 2


@dataclass
class SequenceTaskConfig(TaskConfig):
    """Config of copy / sort: ``seq_len // 2`` symbols in, the same number out."""

    num_symbols: int = field(default=16, metadata={"help": "alphabet size of the input sequence"})


class SequenceTask(Task):
    """Input x of ``seq_len // 2`` random symbols; output y = f(x).

    LM format: tokens ``x SEP y[:-1]``, targets predicting only y. Seq2seq format:
    ``src = x``, ``tgt = SEP y[:-1]``, ``tgt_targets = y``. Tokens: 0 pad, 1 separator, symbols from 2.
    """

    def __init__(self, cfg: SequenceTaskConfig):
        super().__init__(cfg)
        if cfg.num_symbols < 2:
            raise ValueError(f"task.num_symbols must be >= 2, got {cfg.num_symbols}")
        self.length = cfg.seq_len // 2
        self.vocab_size = FIRST_SYMBOL + cfg.num_symbols

    @abc.abstractmethod
    def output(self, x: torch.Tensor) -> torch.Tensor:
        """The target sequence for input ``x`` (copy: x itself; sort: x sorted)."""

    def make_batch(self, gen: torch.Generator, split: str, batch_size: int) -> dict[str, torch.Tensor]:
        n = self.length
        x = torch.randint(FIRST_SYMBOL, self.vocab_size, (batch_size, n), generator=gen)
        y = self.output(x)
        sep = torch.full((batch_size, 1), SEP, dtype=torch.long)
        batch = lm_format(torch.cat([x, sep, y], 1), (torch.arange(2 * n) >= n).expand(batch_size, -1))
        batch.update(src=x, tgt=torch.cat([sep, y[:, :-1]], 1), tgt_targets=y)
        return batch


@register_task("copy", SequenceTaskConfig)
class Copy(SequenceTask):
    """Copy the input sequence."""

    def output(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


@register_task("sort", SequenceTaskConfig)
class Sort(SequenceTask):
    """Sort the input sequence (ascending)."""

    def output(self, x: torch.Tensor) -> torch.Tensor:
        return x.sort(dim=1).values
