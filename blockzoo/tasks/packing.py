"""Packing documents into fixed-length rows: whole documents placed first-fit, a document longer than a row
split into row-sized pieces, per-token document ids nondecreasing along each row.

Pure bookkeeping over lengths (no tensors of data): the tasks gather their tokens from the pieces.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from blockzoo.tasks.base import IGNORE_INDEX


@dataclass(frozen=True)
class Piece:
    """``length`` tokens of document ``doc`` from offset ``start`` (the whole document unless it exceeds a row)."""

    doc: int
    start: int
    length: int


def split_document(doc: int, length: int, row_len: int) -> list[Piece]:
    """A document as pieces of at most ``row_len`` tokens (one piece when it fits a row)."""
    if row_len < 1:
        raise ValueError(f"row length must be >= 1, got {row_len}")
    if length < 0:
        raise ValueError(f"document {doc} has a negative length {length}")
    return [Piece(doc, s, min(row_len, length - s)) for s in range(0, length, row_len)]


def pack_greedy(lengths: Sequence[int], row_len: int, order: Sequence[int] | None = None) -> list[list[Piece]]:
    """Pack documents of ``lengths`` (taken in ``order``, default 0, 1, ...) into rows of ``row_len`` tokens,
    first fit: each piece goes to the first row with room for it, else to a new row. Every token lands in
    exactly one row; only documents longer than ``row_len`` are cut (into row-sized pieces)."""
    rows: list[list[Piece]] = []
    free: list[int] = []
    for doc in (range(len(lengths)) if order is None else order):
        for piece in split_document(int(doc), int(lengths[doc]), row_len):
            if piece.length == 0:
                continue
            slot = next((r for r, room in enumerate(free) if room >= piece.length), None)
            if slot is None:
                rows.append([])
                free.append(row_len)
                slot = len(rows) - 1
            rows[slot].append(piece)
            free[slot] -= piece.length
    return rows


def doc_ids_of(rows: Sequence[Sequence[Piece]], row_len: int) -> torch.Tensor:
    """(len(rows), row_len) int64 ids: 0, 1, ... per piece along each row; the padding after the last piece
    gets one more id (its own document, which predicts nothing)."""
    ids = torch.empty(len(rows), row_len, dtype=torch.int64)
    for r, row in enumerate(rows):
        at = 0
        for i, piece in enumerate(row):
            ids[r, at:at + piece.length] = i
            at += piece.length
        ids[r, at:] = len(row)
    return ids


def packed_lm_batch(data: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor,
                    rows: Sequence[Sequence[Piece]], row_len: int, pad: int = 0) -> dict[str, torch.Tensor]:
    """LM batch of packed rows over a flat corpus ``data`` whose document d is
    ``data[starts[d]:starts[d] + lengths[d]]``: ``tokens``, ``targets`` (the next token of the same document;
    -100 after a document's last token and on padding) and ``doc_ids`` (B, row_len)."""
    B = len(rows)
    tokens = torch.full((B, row_len), pad, dtype=torch.int64)
    targets = torch.full((B, row_len), IGNORE_INDEX, dtype=torch.int64)
    for r, row in enumerate(rows):
        at = 0
        for piece in row:
            begin = int(starts[piece.doc]) + piece.start
            end_doc = int(starts[piece.doc]) + int(lengths[piece.doc])
            n = piece.length
            tokens[r, at:at + n] = data[begin:begin + n].long()
            nxt = min(n, end_doc - begin - 1)  # tokens whose next token is still inside the document
            targets[r, at:at + nxt] = data[begin + 1:begin + 1 + nxt].long()
            at += n
    return {"tokens": tokens, "targets": targets, "doc_ids": doc_ids_of(rows, row_len)}
