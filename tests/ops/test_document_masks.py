"""blockzoo.ops.document_mask / document_positions / doc_ids_from_cu_seqlens: against a loop reference, the
planner's view of a packed batch (block-diagonal -> a sparse path, shown by explain), and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from blockzoo import ops


def ids_of(lengths: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def reference(ids: torch.Tensor, causal: bool, window: tuple[int, int] | None) -> torch.Tensor:
    L = ids.shape[0]
    out = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            ok = bool(ids[i] == ids[j]) and (not causal or j <= i)
            if window is not None:
                ok = ok and window[0] <= j - i <= window[1]
            out[i, j] = ok
    return out


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=5).filter(lambda x: sum(x) <= 14),
                     min_size=1, max_size=3),
       causal=st.booleans(), window=st.one_of(st.none(), st.tuples(st.integers(-4, 0), st.integers(0, 4))))
def test_mask_matches_the_loop_reference(rows, causal, window):
    L = 14
    ids = torch.stack([torch.cat([ids_of(r), torch.full((L - sum(r),), len(r))]) for r in rows])
    got = ops.document_mask(ids, causal=causal, window=window)
    assert got.shape == (len(rows), 1, L, L) and got.dtype == torch.bool
    for b in range(len(rows)):
        assert torch.equal(got[b, 0], reference(ids[b], causal, window))
    pos = ops.document_positions(ids)
    for b in range(len(rows)):
        for t in range(L):
            assert int(pos[b, t]) == int((ids[b, :t + 1] == ids[b, t]).sum()) - 1


def test_cu_seqlens_gives_the_same_mask():
    cu = torch.tensor([0, 3, 4, 9, 12], dtype=torch.int32)
    ids = ops.doc_ids_from_cu_seqlens(cu, 12)
    assert ids.tolist() == [[0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3, 3]]
    assert torch.equal(ops.document_mask(cu_seqlens=cu), ops.document_mask(ids))
    assert torch.equal(ops.document_mask(cu_seqlens=cu, window=2, causal=False),
                       ops.document_mask(ids, window=(-2, 2), causal=False))


@pytest.mark.parametrize("ids,err,match", [
    (torch.tensor([[0, 0, 1, 0]]), ValueError, "nondecreasing.*row 0 goes from 1 to 0 at position 3"),
    (torch.tensor([0, 0, 1]), ValueError, r"\(B, L\)"),
    (torch.tensor([[0.0, 1.0]]), TypeError, "int64 or int32"),
    ([[0, 1]], TypeError, "torch.Tensor"),
])
def test_bad_doc_ids(ids, err, match):
    with pytest.raises(err, match=match):
        ops.document_mask(ids)


@pytest.mark.parametrize("cu,match", [
    (torch.tensor([0, 3, 7]), "end at L=8"),
    (torch.tensor([1, 3, 8]), "start at 0"),
    (torch.tensor([0, 5, 3, 8]), "strictly increasing"),
    (torch.tensor([0, 3, 3, 8]), "strictly increasing"),
    (torch.tensor([[0, 8]]), "1-D"),
])
def test_bad_cu_seqlens(cu, match):
    with pytest.raises(ValueError, match=match):
        ops.document_mask(cu_seqlens=cu, seq_len=8)
    with pytest.raises(TypeError, match="int64 or int32"):
        ops.document_mask(cu_seqlens=torch.tensor([0.0, 8.0]), seq_len=8)
    with pytest.raises(ValueError, match="not both"):
        ops.document_mask(torch.zeros(1, 8, dtype=torch.long), cu_seqlens=torch.tensor([0, 8]))


def packed_lengths(L: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while sum(out) < L:
        out.append(int(torch.empty(1).log_normal_(3.0, 0.8, generator=g).clamp(1, L)))
    out[-1] -= sum(out) - L
    return out


def test_explain_routes_a_packed_batch_to_a_sparse_path():
    L = 512
    cu = torch.tensor([0, *packed_lengths(L, 0)]).cumsum(0)
    mask = ops.document_mask(cu_seqlens=cu)
    q = torch.randn(1, 2, L, 32)
    text = ops.explain(q, q, q, mask, causal=True)
    assert "path=csr" in text or "path=block_sparse" in text, text
    assert "1 x 1 group(s)" in text
    plan = ops.analyze(mask, heads=2, head_dim=32, causal=True, device="cpu")
    assert plan.path in ("csr", "block_sparse") and plan.density < 0.2


def test_masked_attention_with_a_document_mask_is_each_document_alone():
    """float64, forward and backward, against SDPA run on each document by itself."""
    L, H, D = 96, 2, 16
    lengths = packed_lengths(L, 1)
    cu = torch.tensor([0, *lengths]).cumsum(0)
    q, k, v = (torch.randn(1, H, L, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = ops.masked_attention(q, k, v, ops.document_mask(cu_seqlens=cu), causal=True)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), go)
    ref = torch.cat([F.scaled_dot_product_attention(q[..., s:e, :], k[..., s:e, :], v[..., s:e, :], is_causal=True)
                     for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())], dim=2)
    ref_grads = torch.autograd.grad(ref, (q, k, v), go)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
