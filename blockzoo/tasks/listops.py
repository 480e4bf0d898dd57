"""ListOps (Nangia & Bowman, 2018): evaluate nested MAX/MIN/MED/SUM_MOD expressions over digits."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Union

import torch

from blockzoo.config import TaskConfig
from blockzoo.registry import register_task
from blockzoo.tasks.base import IGNORE_INDEX, Task

OPS = ("[MAX", "[MIN", "[MED", "[SM")
VOCAB = ("<pad>", *(str(d) for d in range(10)), *OPS, "]", "=")
TOKEN = {s: i for i, s in enumerate(VOCAB)}
PAD, CLOSE, EQUALS = TOKEN["<pad>"], TOKEN["]"], TOKEN["="]
LEAF_PROB = 0.3

Expr = Union[int, tuple[str, list["Expr"]]]


@dataclass
class ListOpsConfig(TaskConfig):
    """Config of the ListOps generator."""

    max_depth: int = field(default=3, metadata={"help": "deepest nesting of operators (1 = one operator over digits)"})
    max_args: int = field(default=5, metadata={"help": "most arguments of one operator (>= 2)"})
    max_length: int = field(default=0, metadata={"help": "most tokens in an expression; 0 = seq_len - 1"})


def evaluate(expr: Expr) -> int:
    """Value of an expression: MAX, MIN, MED (upper median: sorted(args)[n // 2]), SM (sum mod 10)."""
    if isinstance(expr, int):
        return expr
    op, args = expr
    values = sorted(evaluate(a) for a in args)
    if op == "[MAX":
        return values[-1]
    if op == "[MIN":
        return values[0]
    if op == "[MED":
        return values[len(values) // 2]
    return sum(values) % 10


def to_tokens(expr: Expr) -> list[str]:
    """Token strings of an expression: ``[MAX 3 [MIN 4 7 ] 2 ]``."""
    if isinstance(expr, int):
        return [str(expr)]
    op, args = expr
    return [op, *(t for a in args for t in to_tokens(a)), "]"]


@register_task("listops", ListOpsConfig)
class ListOps(Task):
    """Random ListOps expressions; label = the value (10 classes).

    Classification format: ``tokens`` (expression then '=', right-padded), ``padding`` (True = pad),
    ``label``. LM format: the same tokens; the only target is the answer digit after '='.
    """

    vocab_size = len(VOCAB)
    num_classes = 10

    def __init__(self, cfg: ListOpsConfig):
        super().__init__(cfg)
        self.max_length = cfg.max_length or cfg.seq_len - 1
        if cfg.max_depth < 1 or cfg.max_args < 2:
            raise ValueError(f"task.max_depth must be >= 1 and task.max_args >= 2, got {cfg.max_depth}, {cfg.max_args}")
        if not 4 <= self.max_length <= cfg.seq_len - 1:
            raise ValueError(f"task.max_length={self.max_length} must be in [4, seq_len - 1 = {cfg.seq_len - 1}]")

    def expression(self, rng: random.Random, depth: int = 0, budget: int | None = None) -> Expr:
        """A random expression of at most ``budget`` tokens; the root is always an operator."""
        budget = self.max_length if budget is None else budget
        can_nest = depth < self.cfg.max_depth and budget >= 4
        if not can_nest or (depth > 0 and rng.random() < LEAF_PROB):
            return rng.randrange(10)
        k = rng.randint(2, min(self.cfg.max_args, budget - 2))
        remaining, args = budget - 2, []
        for i in range(k):
            arg = self.expression(rng, depth + 1, remaining // (k - i))
            remaining -= len(to_tokens(arg))
            args.append(arg)
        return rng.choice(OPS), args

    def make_batch(self, gen: torch.Generator, split: str, batch_size: int) -> dict[str, torch.Tensor]:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=gen)))
        width = self.max_length + 1
        tokens = torch.full((batch_size, width), PAD, dtype=torch.long)
        targets = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
        label = torch.empty(batch_size, dtype=torch.long)
        for b in range(batch_size):
            expr = self.expression(rng)
            ids = [TOKEN[t] for t in to_tokens(expr)] + [EQUALS]
            tokens[b, :len(ids)] = torch.tensor(ids)
            label[b] = evaluate(expr)
            targets[b, len(ids) - 1] = TOKEN[str(int(label[b]))]
        return {"tokens": tokens, "targets": targets, "label": label, "padding": tokens == PAD}

    def decode(self, tokens: list[int]) -> str:
        return " ".join(VOCAB[t] for t in tokens if t != PAD)
