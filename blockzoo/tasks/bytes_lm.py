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
from blockzoo.tasks.packing import pack_greedy, packed_lm_batch, split_document

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings"}  # encodings: code-page tables


@dataclass
class BytesLMConfig(TaskConfig):
    """Config of the standard-library byte corpus."""

    max_bytes: int = field(default=4_000_000, metadata={"help": "read at most this many bytes of source"})
    val_every: int = field(default=20, metadata={"help": "every n-th file (sorted) goes to validation"})
    pack: bool = field(default=False, metadata={"help": "pack whole files into rows with doc_ids (a file longer "
                                                        "than a row is split into row-sized pieces)"})


def stdlib_files(root: Path) -> list[Path]:
    """The standard library's .py files under ``root``, sorted, without tests, site-packages and code-page tables."""
    files = (p for p in root.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


SEPARATOR = b"\n\n"  # between files in a split's flat tensor


def load_corpus(root: str, max_bytes: int, val_every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) uint8 tensors. File i (sorted) belongs to val when i % val_every == val_every - 1; each
    split reads its files in order until it holds its share of ``max_bytes`` (1 / val_every for val)."""
    return _load(root, max_bytes, val_every)[0]


def corpus_documents(root: str, max_bytes: int, val_every: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per split, (start, length) int64 tensors of each file inside that split's flat tensor."""
    return _load(root, max_bytes, val_every)[1]


@functools.lru_cache(maxsize=4)
def _load(root: str, max_bytes: int, val_every: int) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                               dict[str, tuple[torch.Tensor, torch.Tensor]]]:
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
    train, val = (bytearray(SEPARATOR.join(parts[s])) for s in ("train", "val"))
    docs = {}
    for split in ("train", "val"):
        lengths = torch.tensor([len(p) for p in parts[split]], dtype=torch.int64)
        starts = torch.zeros_like(lengths)
        starts[1:] = (lengths[:-1] + len(SEPARATOR)).cumsum(0)
        docs[split] = (starts, lengths)
    return (torch.frombuffer(train, dtype=torch.uint8), torch.frombuffer(val, dtype=torch.uint8)), docs


def pieces_of(starts: torch.Tensor, lengths: torch.Tensor, row_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Files as packing units: (start, length) of each file, a file longer than ``row_len`` as its
    row-sized pieces (each then a document of its own)."""
    pieces = [(int(s) + p.start, p.length) for d, (s, n) in enumerate(zip(starts, lengths))
              for p in split_document(d, int(n), row_len) if p.length > 0]
    out = torch.tensor(pieces, dtype=torch.int64).reshape(-1, 2)
    return out[:, 0].contiguous(), out[:, 1].contiguous()


@register_task("bytes_lm", BytesLMConfig)
class BytesLM(Task):
    """Next-byte prediction on the standard library's Python sources; vocab 256.

    Files are sorted by path; every ``val_every``-th goes to validation (5% of the bytes by default). A batch
    is ``batch_size`` windows of ``seq_len + 1`` bytes at random offsets. With ``pack``, a batch is
    ``batch_size`` rows of ``seq_len`` bytes packed with whole files (``blockzoo.tasks.packing``): a file
    longer than a row counts as its row-sized pieces, pieces are drawn at random and placed first fit, and
    the batch carries ``doc_ids``; no target crosses from one document into the next.
    """

    vocab_size = 256

    def __init__(self, cfg: BytesLMConfig):
        super().__init__(cfg)
        if cfg.max_bytes < 1 or cfg.val_every < 2:
            raise ValueError(f"task.max_bytes must be >= 1 and task.val_every >= 2, got {cfg.max_bytes}, {cfg.val_every}")
        root = sysconfig.get_paths()["stdlib"]
        self.data = dict(zip(("train", "val"), load_corpus(root, cfg.max_bytes, cfg.val_every)))
        self.packed = bool(cfg.pack)
        if self.packed:
            self.pieces = {split: pieces_of(*docs, cfg.seq_len)
                           for split, docs in corpus_documents(root, cfg.max_bytes, cfg.val_every).items()}
        for split, data in self.data.items():
            if len(data) <= cfg.seq_len + 1:
                raise ValueError(f"task bytes_lm: the {split} split has {len(data)} bytes, fewer than "
                                 f"task.seq_len + 1 = {cfg.seq_len + 1}; raise task.max_bytes")

    def make_batch(self, gen: torch.Generator, split: str, batch_size: int) -> dict[str, torch.Tensor]:
        if self.packed:
            return self.packed_batch(gen, split, batch_size)
        data, n = self.data[split], self.cfg.seq_len + 1
        offsets = torch.randint(0, len(data) - n + 1, (batch_size, 1), generator=gen)
        full = data[offsets + torch.arange(n)].long()
        return lm_format(full, torch.ones(batch_size, n - 1, dtype=torch.bool))

    def packed_batch(self, gen: torch.Generator, split: str, batch_size: int) -> dict[str, torch.Tensor]:
        """``batch_size`` packed rows: random pieces (with replacement) until they hold a batch's tokens,
        packed first fit; the first ``batch_size`` rows (the fullest) are the batch."""
        starts, lengths = self.pieces[split]
        L = self.cfg.seq_len
        drawn: list[int] = []
        total = 0
        while total < batch_size * L:
            picks = torch.randint(0, len(lengths), (batch_size,), generator=gen).tolist()
            drawn += picks
            total += int(lengths[picks].sum())
        rows = pack_greedy(lengths.tolist(), L, drawn)[:batch_size]
        return packed_lm_batch(self.data[split], starts, lengths, rows, L)

    def decode(self, tokens: list[int]) -> str:
        return bytes(tokens).decode("utf-8", errors="replace")

    def sample_prompt(self) -> list[int]:
        val = bytes(self.data["val"][:100_000].tolist())
        start = val.find(b"\ndef ") + 1
        return list(val[start:start + 24])
