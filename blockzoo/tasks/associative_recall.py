"""Associative recall: a list of key-value pairs, then a key; predict its value."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from blockzoo.config import TaskConfig
from blockzoo.registry import register_task
from blockzoo.tasks.base import Task, lm_format

PAD, SEP, FIRST_KEY = 0, 1, 2


@dataclass
class AssociativeRecallConfig(TaskConfig):
    """Config of associative recall."""

    num_keys: int = field(default=32, metadata={"help": "key alphabet size (keys in a sequence are distinct)"})
    num_values: int = field(default=32, metadata={"help": "value alphabet size"})
    num_pairs: int = field(default=0, metadata={"help": "pairs per sequence; 0 = as many as seq_len and num_keys allow"})


@register_task("associative_recall", AssociativeRecallConfig)
class AssociativeRecall(Task):
    """Tokens ``k1 v1 ... kn vn SEP q``; the only target is the value paired with key q.

    Tokens: 0 pad, 1 separator, keys from 2, then values.
    """

    def __init__(self, cfg: AssociativeRecallConfig):
        super().__init__(cfg)
        if cfg.num_keys < 1 or cfg.num_values < 1:
            raise ValueError(f"task.num_keys and task.num_values must be >= 1, got {cfg.num_keys}, {cfg.num_values}")
        fit = (cfg.seq_len - 2) // 2
        self.num_pairs = cfg.num_pairs or min(cfg.num_keys, fit)
        if not 1 <= self.num_pairs <= min(cfg.num_keys, fit):
            raise ValueError(f"task.num_pairs={self.num_pairs} must be in [1, min(num_keys={cfg.num_keys}, "
                             f"(seq_len - 2) // 2 = {fit})]")
        self.first_value = FIRST_KEY + cfg.num_keys
        self.vocab_size = self.first_value + cfg.num_values

    def make_batch(self, gen: torch.Generator, split: str, batch_size: int) -> dict[str, torch.Tensor]:
        n, cfg = self.num_pairs, self.cfg
        keys = torch.rand(batch_size, cfg.num_keys, generator=gen).argsort(dim=1)[:, :n] + FIRST_KEY
        values = torch.randint(self.first_value, self.vocab_size, (batch_size, n), generator=gen)
        pick = torch.randint(0, n, (batch_size, 1), generator=gen)
        pairs = torch.stack([keys, values], dim=2).flatten(1)
        sep = torch.full((batch_size, 1), SEP, dtype=torch.long)
        full = torch.cat([pairs, sep, keys.gather(1, pick), values.gather(1, pick)], 1)
        predict = torch.zeros(batch_size, 2 * n + 2, dtype=torch.bool)
        predict[:, -1] = True
        return lm_format(full, predict)
