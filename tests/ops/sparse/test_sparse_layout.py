"""SparseLayout: CSR construction, row order, cached transpose, validation and device moves."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blockzoo.ops.sparse import SparseLayout
from blockzoo.ops.sparse import fallback

KINDS = ("random", "empty_rows", "empty", "single", "full_row", "dense")


def make_mask(kind: str, shape: tuple[int, ...], density: float, seed: int) -> torch.Tensor:
    """A bool mask of ``shape`` (M, N) or (B, M, N) with the named structure."""
    gen = torch.Generator().manual_seed(seed)
    rand = torch.rand(shape, generator=gen)
    mask = rand < density
    if kind == "empty_rows":
        mask[..., ::2, :] = False
    elif kind == "empty":
        mask[:] = False
    elif kind == "single":
        flat = rand.reshape(-1, shape[-2] * shape[-1])
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[torch.arange(flat.shape[0]), flat.argmax(-1)] = True
        mask = mask.reshape(shape)
    elif kind == "full_row":
        mask = rand < density / 4
        mask[..., shape[-2] // 2, :] = True
    elif kind == "dense":
        mask[:] = True
    return mask


@st.composite
def masks(draw, per_batch: bool | None = None, max_size: int = 13) -> torch.Tensor:
    """Random masks covering empty rows, empty layouts, a single nonzero, a full row, odd sizes."""
    per_batch = draw(st.booleans()) if per_batch is None else per_batch
    M, N = draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    shape = (draw(st.integers(1, 3)), M, N) if per_batch else (M, N)
    return make_mask(draw(st.sampled_from(KINDS)), shape, draw(st.sampled_from([0.1, 0.4, 0.8])),
                     draw(st.integers(0, 2**16)))


def naive_csr(mask2d: torch.Tensor) -> tuple[list[int], list[int]]:
    offsets, cols = [0], []
    for row in mask2d.tolist():
        cols += [c for c, keep in enumerate(row) if keep]
        offsets.append(len(cols))
    return offsets, cols


@settings(max_examples=40, deadline=None)
@given(mask=masks())
def test_from_mask_builds_csr(mask):
    layout = SparseLayout.from_mask(mask)
    patterns = mask if layout.per_batch else mask[None]
    assert layout.shape == tuple(mask.shape) and layout.per_batch == (mask.dim() == 3)
    assert layout.nnz == int(mask.sum()) and layout.density == pytest.approx(mask.float().mean().item())
    assert layout.row_offsets.dtype == layout.col_indices.dtype == layout.row_order.dtype == torch.int32
    ro = layout.row_offsets.reshape(len(patterns), -1)
    ci = layout.col_indices.reshape(len(patterns), -1)
    assert ci.shape[1] == layout.max_nnz == max(int(p.sum()) for p in patterns)
    for g, pattern in enumerate(patterns):
        offsets, cols = naive_csr(pattern)
        assert ro[g].tolist() == offsets
        assert ci[g, :len(cols)].tolist() == cols and not ci[g, len(cols):].any()
    assert torch.equal(layout.to_dense(), mask)


@settings(max_examples=40, deadline=None)
@given(mask=masks())
def test_row_order_sorts_rows_by_length(mask):
    layout = SparseLayout.from_mask(mask)
    lengths = (layout.row_offsets[..., 1:] - layout.row_offsets[..., :-1]).reshape(layout.num_patterns, -1)
    order = layout.row_order.reshape(layout.num_patterns, -1).long()
    for g in range(layout.num_patterns):
        assert sorted(order[g].tolist()) == list(range(mask.shape[-2]))
        ranked = [(-int(lengths[g, r]), int(r)) for r in order[g]]
        assert ranked == sorted(ranked)  # longest first, ties in row order


def dense_values(values: torch.Tensor, layout: SparseLayout) -> torch.Tensor:
    """(G, Z, M, N) float64 dense matrix of ``values`` placed at the layout's entries."""
    rows, cols, valid = layout.entries()
    G = layout.num_patterns
    v = values.double().reshape(G, math.prod(values.shape[:-1]) // G, values.shape[-1])
    out = torch.zeros(*v.shape[:2], *layout.shape[-2:], dtype=torch.float64)
    for g in range(G):
        keep = valid[g]
        out[g][:, rows[g][keep], cols[g][keep]] = v[g][:, keep]
    return out


@settings(max_examples=40, deadline=None)
@given(mask=masks())
def test_transpose_is_cached_and_permutes_values(mask):
    layout = SparseLayout.from_mask(mask)
    t = layout.transpose()
    assert layout.transpose() is t
    mask_t = mask.transpose(-1, -2)
    ref = SparseLayout.from_mask(mask_t)
    assert torch.equal(t.row_offsets, ref.row_offsets) and torch.equal(t.col_indices, ref.col_indices)
    assert torch.equal(t.row_order, ref.row_order)
    values = torch.randn(layout.num_patterns, 2, layout.max_nnz)
    permuted = values.gather(-1, t.perm.reshape(layout.num_patterns, 1, -1).expand_as(values).long())
    assert torch.equal(dense_values(permuted, ref), dense_values(values, layout).transpose(-1, -2))
    pad = t.perm.reshape(layout.num_patterns, -1)[:, layout.max_nnz:]
    assert pad.numel() == 0 or torch.equal(pad, torch.arange(layout.max_nnz)[-pad.shape[1]:].expand_as(pad))
    for ours, theirs in zip(t[:3], fallback.csr_transpose(layout.row_offsets, layout.col_indices, mask.shape[-1])):
        assert torch.equal(ours, theirs)


@settings(max_examples=30, deadline=None)
@given(mask=masks(), int64=st.booleans())
def test_from_csr_round_trips(mask, int64):
    layout = SparseLayout.from_mask(mask)
    dtype = torch.int64 if int64 else torch.int32
    again = SparseLayout.from_csr(layout.row_offsets.to(dtype), layout.col_indices.to(dtype), tuple(mask.shape))
    assert again.row_offsets.dtype == torch.int32 and torch.equal(again.to_dense(), mask)
    assert again.nnz == layout.nnz and again.max_nnz == layout.max_nnz


def test_from_csr_accepts_non_contiguous_and_padding():
    ro = torch.tensor([[0, 2, 2, 2], [0, 0, 1, 1]], dtype=torch.int32)
    ci = torch.tensor([[0, 2], [1, 7]], dtype=torch.int32).t()  # pattern 1: one entry, then padding (ignored)
    assert not ci.is_contiguous()
    layout = SparseLayout.from_csr(ro, ci, (2, 3, 3))
    assert layout.col_indices.is_contiguous() and layout.nnz_per_pattern == [2, 1] and layout.max_nnz == 2
    expected = torch.zeros(2, 3, 3, dtype=torch.bool)
    expected[0, 0, :2] = expected[1, 1, 2] = True
    assert torch.equal(layout.to_dense(), expected)


@pytest.mark.parametrize("row_offsets, col_indices, shape, match", [
    ([0, 2, 3], [1, 0, 2], (2, 3), "strictly increasing"),
    ([0, 2, 3], [1, 1, 2], (2, 3), "strictly increasing"),
    ([0, 2, 3], [0, 1, 3], (2, 3), r"outside \[0, 3\)"),
    ([0, 2, 3], [-1, 1, 2], (2, 3), r"outside \[0, 3\)"),
    ([1, 2, 3], [0, 1, 2], (2, 3), "start at 0"),
    ([0, 2, 1], [0, 1, 2], (2, 3), "non-decreasing"),
    ([0, 2, 2], [0, 1, 2], (2, 3), "end at 2 but col_indices has 3"),
    ([0, 1], [0], (2, 3), r"needs \(3,\)"),
    ([[0, 1, 4]], [[0, 1]], (1, 2, 3), "only 2 entries"),
    ([0, 1, 1], [0], (2, 3, 4, 5), "shape must be"),
])
def test_from_csr_rejects_bad_patterns(row_offsets, col_indices, shape, match):
    with pytest.raises(ValueError, match=match):
        SparseLayout.from_csr(torch.tensor(row_offsets), torch.tensor(col_indices), shape)


def test_from_csr_rejects_bad_types_and_devices():
    ro, ci = torch.tensor([0, 1]), torch.tensor([0])
    with pytest.raises(TypeError, match="row_offsets must be int32"):
        SparseLayout.from_csr(ro.float(), ci, (1, 1))
    with pytest.raises(TypeError, match="col_indices must be a torch.Tensor"):
        SparseLayout.from_csr(ro, [0], (1, 1))
    with pytest.raises(ValueError, match="row_offsets is on cpu but col_indices is on meta"):
        SparseLayout.from_csr(ro, ci.to("meta"), (1, 1))


def test_from_mask_rejects_bad_masks():
    with pytest.raises(TypeError, match="must be bool"):
        SparseLayout.from_mask(torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"\(M, N\) or \(B, M, N\)"):
        SparseLayout.from_mask(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        SparseLayout.from_mask([[True]])


def test_properties_repr_and_to():
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, 1, 2] = mask[0, 3, :] = mask[1, 0, 0] = True
    layout = SparseLayout.from_mask(mask)
    assert (layout.nnz, layout.max_nnz, layout.nnz_per_pattern, layout.num_patterns) == (7, 6, [6, 1], 2)
    assert layout.density == pytest.approx(7 / 40)
    assert repr(layout) == "SparseLayout(shape=(2, 4, 5), nnz=7, density=0.175, per_batch=True, device=cpu)"
    assert layout.to("cpu") is layout
    t = layout.transpose()
    moved = layout.to("meta")
    assert moved.device.type == "meta" and moved.shape == layout.shape and moved.nnz == 7
    assert moved.transpose().perm.device.type == "meta" and moved.transpose().perm.shape == t.perm.shape


def test_empty_layout():
    layout = SparseLayout.from_mask(torch.zeros(3, 4, dtype=torch.bool))
    assert (layout.nnz, layout.max_nnz, layout.density) == (0, 0, 0.0)
    assert layout.transpose().row_offsets.tolist() == [0] * 5
