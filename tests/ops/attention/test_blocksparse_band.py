"""Band (sliding-window) block masks: analytic tile lists, detection in dense masks, and the kernels'
band path (keep computed from row / column indices) against float64; multi-word bitmask decoding."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blockzoo.ops import backend, torch_ref
from blockzoo.ops.attention import analysis, cost, masked_attention
from blockzoo.ops.block_mask import band_dense, block_mask
from blockzoo.ops.triton.blocksparse_attention import blocksparse_attention
from helpers import TOL, assert_attention_matches, rel_err

LISTS = ("full_offsets", "full_cols", "part_offsets", "part_cols", "full_offsets_t", "full_rows_t",
         "part_offsets_t", "part_rows_t", "row_order")


def _with_causal(mask: torch.Tensor, causal: bool) -> torch.Tensor:
    return mask & torch.ones(mask.shape[-2:], dtype=torch.bool).tril() if causal else mask


def _same_tiles(a, b) -> None:
    for name in LISTS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.full_tiles, a.partial_tiles, a.nnz) == (b.full_tiles, b.partial_tiles, b.nnz)


# ------------------------------------------------------------------------------------ structure
@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 90), S=st.integers(1, 90), lo=st.integers(-100, 100), width=st.integers(-5, 100),
       causal=st.booleans(), tile=st.sampled_from([(16, 16), (32, 16), (16, 64), (32, 128), (64, 32)]))
def test_band_tile_lists_equal_the_dense_build(L, S, lo, width, causal, tile):
    hi = lo + width  # width < 0: an empty band
    bm = block_mask(window=(lo, hi), q_len=L, kv_len=S, causal=causal, block_size=tile)
    dense = _with_causal(band_dense(L, S, lo, hi), causal)
    ref = block_mask(dense, causal=causal, block_size=tile, detect_band=False)
    assert bm.band is not None and ref.band is None
    _same_tiles(bm, ref)
    assert torch.equal(bm.to_dense()[0, 0], dense)
    assert bm.bits.shape[0] == 0
    # part_bits_t names each partial tile's index in the per-query-block list, as for a bitmask build
    nm, nn = bm.n_row_blocks, bm.n_col_blocks
    rows = torch.repeat_interleave(torch.arange(nm), torch.diff(bm.part_offsets.long()))
    fwd = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(rows, bm.part_cols))}
    cols = torch.repeat_interleave(torch.arange(nn), torch.diff(bm.part_offsets_t.long()))
    assert fwd == {(int(r), int(c)): int(b) for c, r, b in zip(cols, bm.part_rows_t, bm.part_bits_t)}


@pytest.mark.parametrize("L,S", [(64, 64), (47, 79)])
def test_band_tile_lists_at_tile_edges(L, S):
    """(lo, hi) near multiples of the 16 x 16 tile, where tiles flip between full, partial and empty
    (a tile's j - i spans [16k - 15, 16k + 15])."""
    edges = [v for v in range(-50, 51) if v % 16 in (14, 15, 0, 1, 2)]
    for lo in edges:
        for hi in edges:
            for causal in ((False, True) if hi >= -2 else (False,)):
                bm = block_mask(window=(lo, hi), q_len=L, kv_len=S, causal=causal, block_size=(16, 16))
                dense = _with_causal(band_dense(L, S, lo, hi), causal)
                _same_tiles(bm, block_mask(dense, causal=causal, block_size=(16, 16), detect_band=False))


@pytest.mark.parametrize("L,S,lo,hi,causal", [(257, 257, -20, 20, False), (200, 130, -7, 50, True),
                                              (64, 64, 3, 10, False), (50, 70, -49, 69, False),
                                              (40, 40, -5, 5, True)])
def test_dense_band_masks_are_detected(L, S, lo, hi, causal):
    dense = band_dense(L, S, lo, hi)
    bm = block_mask(dense, causal=causal, block_size=(32, 32))
    want = block_mask(window=(lo, hi), q_len=L, kv_len=S, causal=causal, block_size=(32, 32))
    assert bm.band is not None and bm.band == want.band
    _same_tiles(bm, want)
    assert torch.equal(bm.to_dense()[0, 0], _with_causal(dense, causal))
    # as (1, 1, L, S), and an all-keep mask (a band from -(L - 1) to S - 1)
    assert block_mask(dense[None, None], causal=causal, block_size=(32, 32)).band == want.band
    assert block_mask(torch.ones(L, S, dtype=torch.bool), block_size=(32, 32)).band == (-(L - 1), S - 1)


def test_masks_that_are_not_bands_keep_bitmasks():
    band = band_dense(100, 100, -10, 10)
    hole = band.clone()
    hole[50, 50] = False
    extra = band.clone()
    extra[0, 99] = True
    empty_row = band.clone()
    empty_row[5] = False
    per_head = torch.stack([band, band_dense(100, 100, -3, 3)])[None]
    for mask in (hole, extra, empty_row, per_head, torch.zeros(100, 100, dtype=torch.bool),
                 torch.rand(100, 100) < 0.5):
        bm = block_mask(mask, block_size=(32, 32))
        assert bm.band is None and torch.equal(bm.to_dense(), mask.expand(bm.to_dense().shape))
    assert block_mask(band, block_size=(32, 32), detect_band=False).band is None


def test_window_argument_errors_and_device():
    with pytest.raises(ValueError, match="exactly one"):
        block_mask(torch.ones(8, 8, dtype=torch.bool), window=(-1, 1), q_len=8, kv_len=8)
    with pytest.raises(ValueError, match="q_len and kv_len"):
        block_mask(window=(-1, 1), q_len=8)
    bm = block_mask(window=(-10**12, 10**12), q_len=40, kv_len=30, block_size=(16, 16), device="cpu")
    assert bm.band == (-40, 30) and bm.nnz == 40 * 30 and bm.device == torch.device("cpu")


# ------------------------------------------------------------------------------------ kernels
def _qkv(B, H, HK, L, S, D, dtype):
    shapes = ((B, H, L, D), (B, HK, S, D), (B, HK, S, D))
    return tuple(torch.randn(*shape, dtype=dtype).requires_grad_() for shape in shapes)


def _check(q, k, v, mask, bm, key_keep=None):
    """Forward and dq, dk, dv of the kernels against float64 (mask: the dense keep mask, causal included)."""
    out = blocksparse_attention(q, k, v, bm, key_keep=key_keep)
    assert_attention_matches(out, q, k, v, mask if key_keep is None else mask & key_keep[:, None, None, :])
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    return out.detach()


BAND_CASES = [
    # (name, B, H, HK, L, S, D, dtype, window, causal, tile, build)
    ("narrow, odd L", 1, 2, 2, 257, 257, 32, torch.float32, (-5, 5), False, (32, 32), "window"),
    ("wide, L=200, fp16", 1, 1, 1, 200, 200, 32, torch.float16, (-70, 70), False, (32, 64), "window"),
    ("asymmetric, L!=S, GQA", 2, 2, 1, 100, 150, 32, torch.float32, (-3, 40), False, (16, 32), "detect"),
    ("causal window", 1, 2, 1, 200, 200, 32, torch.float32, (-40, 10), True, (64, 32), "window"),
    ("causal, detected, 16x16", 1, 1, 1, 90, 90, 16, torch.float32, (-12, 0), True, (16, 16), "detect"),
    ("empty rows", 1, 1, 1, 130, 64, 32, torch.float32, (2, 9), False, (32, 32), "window"),
    ("wide, 128-column tiles", 1, 1, 1, 70, 200, 16, torch.float32, (-30, 150), False, (16, 128), "detect"),
]


@pytest.mark.parametrize("case", BAND_CASES, ids=[c[0] for c in BAND_CASES])
def test_band_path_matches_reference(case):
    name, B, H, HK, L, S, D, dtype, (lo, hi), causal, tile, build = case
    dense = _with_causal(band_dense(L, S, lo, hi), causal)
    if build == "window":
        bm = block_mask(window=(lo, hi), q_len=L, kv_len=S, causal=causal, block_size=tile)
    else:
        bm = block_mask(band_dense(L, S, lo, hi), causal=causal, block_size=tile)
    assert bm.band is not None and bm.partial_tiles > 0
    q, k, v = _qkv(B, H, HK, L, S, D, dtype)
    out = _check(q, k, v, dense, bm)
    empty = ~dense.any(-1)
    if name == "empty rows":
        assert empty.any()
    assert torch.equal(out[..., empty, :], torch.zeros_like(out[..., empty, :]))


def test_band_path_with_key_padding():
    L, S = 100, 120
    bm = block_mask(window=(-20, 15), q_len=L, kv_len=S, block_size=(32, 32))
    key_keep = torch.rand(2, S) < 0.7
    key_keep[1, :40] = False  # with the window, the first rows of batch 1 keep nothing
    q, k, v = _qkv(2, 2, 1, L, S, 32, torch.float32)
    _check(q, k, v, band_dense(L, S, -20, 15), bm, key_keep)


@pytest.mark.parametrize("tile,transposed_heads", [((16, 128), False), ((32, 64), True)])
def test_multiword_bitmasks_match_reference(tile, transposed_heads):
    """Random partial tiles with 2 and 4 words per row: every word's bits decode in column order."""
    L, S = 70, 150
    mask = torch.rand(1, 2, L, S) < 0.4
    mask[..., 0, :] = True  # bit 31 of every word set
    mask[..., 1, :] = False
    bm = block_mask(mask, block_size=tile)
    assert bm.band is None and bm.partial_tiles > 0 and bm.words == tile[1] // 32
    q, k, v = _qkv(1, 2, 2, L, S, 32, torch.float32)
    if transposed_heads:  # (B, L, H, D) storage
        q = q.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    _check(q, k, v, mask, bm)


def test_masked_attention_uses_the_band_for_a_window_mask():
    """The local-window route (a dense window mask through masked_attention) gets a band block mask."""
    analysis.clear_cache()
    L, D = 96, 16
    mask = band_dense(L, L, -8, 8)
    q, k, v = _qkv(1, 2, 2, L, L, D, torch.float32)
    ref = torch_ref.attention(q.double(), k.double(), v.double(), mask, True).detach()
    with backend.force("triton"):
        out = masked_attention(q, k, v, mask, causal=True, path="block_sparse")
    assert rel_err(out.detach(), ref) < 2 * TOL[torch.float32]
    blocks = analysis.mask_stats(mask, L, L, True, cost.candidate_tiles("cuda", True)).blocks
    assert blocks and all(bm.band == (-8, 0) for bm in blocks.values())
    analysis.clear_cache()
