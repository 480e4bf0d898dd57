"""Packing documents into rows (blockzoo.tasks.packing) and bytes_lm's task.pack=true: every token exactly
once, no document cut except those longer than a row, ids nondecreasing, targets never cross documents."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blockzoo.tasks import IGNORE_INDEX, build_task
from blockzoo.tasks.packing import Piece, doc_ids_of, pack_greedy, packed_lm_batch

lengths_st = st.lists(st.integers(0, 40), min_size=0, max_size=30)


@settings(max_examples=200, deadline=None)
@given(lengths=lengths_st, row_len=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_every_token_once_and_only_long_documents_cut(lengths, row_len, seed):
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    rows = pack_greedy(lengths, row_len, order)
    seen: dict[int, list[tuple[int, int]]] = {}
    rows_of: dict[int, set[int]] = {}
    for r, row in enumerate(rows):
        assert 0 < sum(p.length for p in row) <= row_len
        for p in row:
            assert p.length > 0
            seen.setdefault(p.doc, []).append((p.start, p.length))
            rows_of.setdefault(p.doc, set()).add(r)
    for d, n in enumerate(lengths):
        covered = sorted(seen.get(d, []))
        at = 0
        for start, length in covered:  # the pieces tile [0, n) exactly, in order, without overlap
            assert start == at
            at += length
        assert at == n
        if n <= row_len:
            assert len(rows_of.get(d, ())) <= 1, f"document {d} of {n} <= {row_len} tokens was cut"
        else:
            assert all(length == row_len for _, length in covered[:-1])


@settings(max_examples=100, deadline=None)
@given(lengths=lengths_st, row_len=st.integers(1, 24))
def test_ids_nondecreasing_and_padding_is_its_own_document(lengths, row_len):
    rows = pack_greedy(lengths, row_len)
    ids = doc_ids_of(rows, row_len)
    if rows:
        assert (ids[:, 1:] >= ids[:, :-1]).all()
        for r, row in enumerate(rows):
            used = sum(p.length for p in row)
            assert (ids[r, used:] == len(row)).all()
            assert int(ids[r, :used].unique().numel()) == len(row)


def test_first_fit_fills_gaps_in_order():
    rows = pack_greedy([5, 8, 3, 2], 10)
    assert rows == [[Piece(0, 0, 5), Piece(2, 0, 3), Piece(3, 0, 2)], [Piece(1, 0, 8)]]
    assert pack_greedy([25], 10) == [[Piece(0, 0, 10)], [Piece(0, 10, 10)], [Piece(0, 20, 5)]]
    with pytest.raises(ValueError, match="row length"):
        pack_greedy([3], 0)


def test_packed_lm_batch_targets_stay_inside_documents():
    data = torch.arange(100, 140, dtype=torch.uint8)
    starts, lengths = torch.tensor([0, 10, 20]), torch.tensor([4, 3, 6])
    rows = pack_greedy(lengths.tolist(), 8)
    b = packed_lm_batch(data, starts, lengths, rows, 8)
    assert b["tokens"][0].tolist() == [100, 101, 102, 103, 110, 111, 112, 0]
    assert b["targets"][0].tolist() == [101, 102, 103, IGNORE_INDEX, 111, 112, IGNORE_INDEX, IGNORE_INDEX]
    assert b["doc_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2]


def test_bytes_lm_pack_is_deterministic_and_never_crosses_documents():
    task = build_task({"name": "bytes_lm", "seq_len": 64, "pack": True, "max_bytes": 200_000})
    a, b = task.batch("train", 3, 6), task.batch("train", 3, 6)
    assert set(a) == {"tokens", "targets", "doc_ids"}
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["tokens"], task.batch("train", 4, 6)["tokens"])
    ids, tok, tgt = a["doc_ids"], a["tokens"], a["targets"]
    assert ids.shape == tok.shape == tgt.shape == (6, 64) and ids.dtype == torch.int64
    assert (ids[:, 1:] >= ids[:, :-1]).all()
    same = ids[:, 1:] == ids[:, :-1]
    # inside a document the target is the next token; at a document's end nothing is predicted
    assert torch.equal(tgt[:, :-1][same], tok[:, 1:][same])
    assert (tgt[:, :-1][~same] == IGNORE_INDEX).all()
    assert (tgt[:, -1] == IGNORE_INDEX).all()
    unpacked = build_task({"name": "bytes_lm", "seq_len": 64, "max_bytes": 200_000}).batch("train", 3, 6)
    assert "doc_ids" not in unpacked
