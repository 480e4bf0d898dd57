"""Packed-document block masks built from the ids (no (L, L) tensor): the same tiles, bitmasks and counts as
``block_mask(document_mask(...))`` on random layouts, the CSR layout of the same pairs, and the attention
paths that read them (CSR on the CPU, the block-sparse kernel under the Triton interpreter) against float64."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blockzoo import ops
from blockzoo.ops import backend
from blockzoo.ops.attention import analysis, masked_attention
from blockzoo.ops.block_mask import block_mask
from blockzoo.ops.document_blocks import document_block_mask, document_bounds, document_layout
from blockzoo.ops.masks import document_mask
from blockzoo.ops.triton.blocksparse_attention import blocksparse_attention
from helpers import assert_attention_matches

LISTS = ("full_offsets", "full_cols", "part_offsets", "part_cols", "bits", "full_offsets_t", "full_rows_t",
         "part_offsets_t", "part_rows_t", "part_bits_t", "row_order")
TILES = [(16, 16), (32, 16), (16, 64), (32, 32), (64, 32), (16, 128)]


def _ids(lengths_per_row: list[list[int]]) -> torch.Tensor:
    """(B, L) ids from each row's document lengths (rows of one total length)."""
    return torch.stack([torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r)) for r in lengths_per_row])


@st.composite
def layouts(draw) -> torch.Tensor:
    L = draw(st.integers(1, 150))
    B = draw(st.integers(1, 3))
    rows = []
    for _ in range(B):
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, L - 1)), max_size=12)))) if L > 1 else []
        bounds = [0, *cuts, L]
        rows.append([b - a for a, b in zip(bounds, bounds[1:])])
    return _ids(rows)


def _same(a, b) -> None:
    for name in LISTS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.full_tiles, a.partial_tiles, a.nnz) == (b.full_tiles, b.partial_tiles, b.nnz)
    assert (a.batch, a.heads, a.q_len, a.kv_len) == (b.batch, b.heads, b.q_len, b.kv_len)


@settings(max_examples=120, deadline=None)
@given(ids=layouts(), causal=st.booleans(), tile=st.sampled_from(TILES),
       window=st.one_of(st.none(), st.integers(0, 60),
                        st.tuples(st.integers(-60, 20), st.integers(0, 60)).filter(lambda w: w[0] <= w[1])))
def test_tiles_equal_the_dense_build(ids, causal, tile, window):
    bm = document_block_mask(ids, causal=causal, window=window, block_size=tile)
    dense = document_mask(ids, causal=causal, window=window)
    ref = block_mask(dense, causal=causal, block_size=tile, detect_band=False)
    _same(bm, ref)
    assert bm.causal == causal and bm.doc_ids is not None and bm.band is None
    assert bm.bits.shape[0] == bm.partial_tiles  # only partial tiles carry bitmasks
    assert torch.equal(bm.to_dense(), dense)
    layout = document_layout(ids, causal, window)
    assert layout.nnz == bm.nnz
    assert torch.equal(layout.to_dense().reshape(dense.shape), dense)


def test_cu_seqlens_give_one_shared_group_and_odd_lengths_work():
    cu = torch.tensor([0, 3, 40, 41, 97, 100])
    bm = document_block_mask(cu_seqlens=cu, block_size=(32, 16))
    ids = ops.doc_ids_from_cu_seqlens(cu, 100)
    _same(bm, block_mask(document_mask(ids), causal=True, block_size=(32, 16), detect_band=False))
    assert bm.batch == 1 and bm.q_len == 100  # L not a multiple of either tile side


def test_a_different_layout_per_row_gives_one_group_per_row():
    ids = _ids([[30, 34], [64], [1, 1, 62]])
    bm = document_block_mask(ids, block_size=(16, 16))
    assert bm.batch == 3
    per_row = [document_block_mask(ids[b:b + 1], block_size=(16, 16)).nnz for b in range(3)]
    assert bm.nnz == sum(per_row) and len(set(per_row)) == 3


def test_bounds_are_each_rows_kept_run():
    ids = _ids([[2, 5, 3]])
    first, last = document_bounds(ids, causal=True, window=(-2, 0))
    assert first.tolist() == [[0, 0, 2, 2, 2, 3, 4, 7, 7, 7]]
    assert last.tolist() == [list(range(10))]


def test_bad_arguments_are_refused():
    ids = _ids([[4, 4]])
    with pytest.raises(ValueError, match="block_m"):
        document_block_mask(ids, block_size=(24, 16))
    with pytest.raises(ValueError, match="lo <= hi"):
        document_block_mask(ids, window=(3, -3), block_size=16)
    with pytest.raises(ValueError, match="nondecreasing"):
        document_block_mask(ids.flip(1), block_size=16)
    with pytest.raises(ValueError, match="doc_ids .* or cu_seqlens"):
        document_block_mask(block_size=16)
    with pytest.raises(ValueError, match="end at L"):
        document_block_mask(cu_seqlens=torch.tensor([0, 3, 8]), seq_len=9)


def test_memory_follows_the_kept_pairs():
    """L = 16384 in documents of 256: the tile grid and the partial tiles only (the dense mask would be 256 MiB)."""
    L = 16384
    ids = torch.arange(L)[None] // 256
    bm = document_block_mask(ids, block_size=(128, 64))
    held = sum(t.numel() * t.element_size() for t in (bm.bits, bm.full_cols, bm.part_cols, bm.part_bits_t))
    assert held < 4 * 2**20
    assert bm.nnz == 64 * 256 * 257 // 2


# ------------------------------------------------------------------------------------ attention
def _qkv(B, H, L, D, dtype=torch.float64):
    return tuple(torch.randn(B, H, L, D, dtype=dtype).requires_grad_() for _ in range(3))


@pytest.mark.parametrize("rows,window", [([[70, 50, 136]], None), ([[100, 156], [3, 250, 3]], None),
                                         ([[128, 128]], (-40, 0))])
def test_csr_path_reads_the_pairs_from_the_ids(rows, window, monkeypatch):
    analysis.clear_cache()
    ids = _ids(rows)
    bm = document_block_mask(ids, window=window, block_size=(32, 32))
    dense = document_mask(ids, window=window)
    monkeypatch.setattr(type(bm), "to_dense", lambda self: pytest.fail("the csr path expanded the block mask"))
    q, k, v = _qkv(ids.shape[0], 2, ids.shape[1], 16)
    out = masked_attention(q, k, v, bm, causal=True, path="csr")
    assert ops.last_path("masked_attention") == "csr"
    assert_attention_matches(out, q, k, v, dense)
    analysis.clear_cache()


def test_the_plan_offers_csr_and_explain_names_the_documents():
    analysis.clear_cache()
    ids = torch.arange(4096)[None] // 256
    bm = document_block_mask(ids, block_size=(32, 32))
    q, k, v = _qkv(1, 2, 4096, 16, torch.float32)
    text = ops.explain(q, k, v, bm, causal=True)
    assert "path=csr" in text and "packed documents" in text and "empty rows 0" in text
    analysis.clear_cache()


@pytest.mark.parametrize("rows,window,tile,dtype", [([[80, 20, 28]], None, (16, 16), torch.float32),
                                                    ([[17, 83], [50, 50]], (-40, 0), (16, 16), torch.float32),
                                                    ([[64, 37]], None, (16, 32), torch.float16)])
def test_block_sparse_kernel_runs_the_document_tiles(rows, window, tile, dtype):
    ids = _ids(rows)
    bm = document_block_mask(ids, window=window, block_size=tile)
    assert bm.partial_tiles > 0 and bm.full_tiles > 0
    q, k, v = _qkv(ids.shape[0], 2, ids.shape[1], 32, dtype)
    with backend.force("triton"):
        out = blocksparse_attention(q, k, v, bm)
    assert_attention_matches(out, q, k, v, document_mask(ids, window=window))


def test_document_mask_object_builds_each_form_once(monkeypatch):
    ids = _ids([[10, 30], [20, 20]])
    dm, positions = ops.packed_documents(ids, None, 40)
    assert positions[1].tolist() == list(range(20)) * 2
    assert dm.block_mask() is dm.block_mask(True) and dm.block_mask().causal
    assert dm.block_mask(window=(-4, 0)) is not dm.block_mask()
    assert torch.equal(dm.dense(), document_mask(ids)) and dm.dense() is dm.dense()
    assert ops.packed_documents(None, None, 40) is None
