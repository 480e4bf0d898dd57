"""Block masks and the block-sparse Triton attention kernels (interpreter: fp32 / fp16) against float64."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blockzoo.ops.block_mask import block_mask, pack_bits, unpack_bits
from blockzoo.ops.triton.blocksparse_attention import blocksparse_attention
from helpers import assert_attention_matches


def _tricky(batch: int, heads: int, L: int, S: int, density: float) -> torch.Tensor:
    """Random keep mask with an empty row, a full row and a row keeping one element per group."""
    m = torch.rand(batch, heads, L, S) < density
    m[..., 1, :] = False
    m[..., 2, :] = True
    m[..., 3, :] = False
    m[..., 3, S // 2] = True
    return m


def _band(L: int, S: int, width: int) -> torch.Tensor:
    i = torch.arange(L)[:, None]
    j = torch.arange(S)[None, :]
    return (i - j).abs() <= width


def _qkv(B, H, HK, L, S, D, dtype, transposed=False):
    if transposed:  # (B, L, H, D) storage viewed as (B, H, L, D): non-contiguous heads
        q = torch.randn(B, L, H, D, dtype=dtype).transpose(1, 2)
        k = torch.randn(B, S, HK, D, dtype=dtype).transpose(1, 2)
        v = torch.randn(B, S, HK, D, dtype=dtype).transpose(1, 2)
    else:
        q = torch.randn(B, H, L, D, dtype=dtype)
        k = torch.randn(B, HK, S, D, dtype=dtype)
        v = torch.randn(B, HK, S, D, dtype=dtype)
    return (t.requires_grad_() for t in (q, k, v))


CASES = [
    # (name, B, H, HK, L, S, D, dtype, causal, tile, transposed)
    ("random per-batch, GQA, L!=S", 2, 2, 1, 100, 75, 32, torch.float32, False, (32, 32), False),
    ("random per-head, causal", 1, 2, 2, 100, 100, 32, torch.float16, True, (32, 32), True),
    ("banded odd L", 1, 1, 1, 257, 257, 32, torch.float32, False, (64, 32), False),
    ("block layout, causal, D=64", 1, 2, 1, 96, 96, 64, torch.float16, True, (32, 64), False),
    ("small L, D=16", 1, 2, 2, 33, 40, 16, torch.float32, False, (16, 16), False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_blocksparse_matches_reference(case):
    name, B, H, HK, L, S, D, dtype, causal, tile, transposed = case
    if name.startswith("random per-batch"):
        mask = _tricky(B, 1, L, S, 0.3)
    elif name.startswith("random per-head"):
        mask = _tricky(1, H, L, S, 0.2)
    elif name.startswith("banded"):
        mask = _band(L, S, 20)
        mask[5] = False
    elif name.startswith("block"):
        layout = torch.rand(3, 3) < 0.5
        layout[0, 0] = True
        mask = layout.repeat_interleave(32, 0).repeat_interleave(32, 1)[:L, :S]
    else:
        mask = _tricky(1, 1, L, S, 0.5)[0, 0]
    q, k, v = _qkv(B, H, HK, L, S, D, dtype, transposed)
    bm = block_mask(mask, q_len=L, kv_len=S, causal=causal, block_size=tile)
    assert_attention_matches(blocksparse_attention(q, k, v, bm), q, k, v, mask, causal)


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-64, ValueError), ((64, 64), TypeError),
                                       ("64", TypeError), (64.0, TypeError)])
def test_layout_block_is_validated(bad, error):
    layout = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(error, match=r"layout_block must be a positive int .*got"):
        block_mask(layout=layout, layout_block=bad, q_len=128, kv_len=128)


def test_layout_input_and_full_tiles():
    layout = torch.tensor([[True, False], [True, True]])
    bm = block_mask(layout=layout, layout_block=64, q_len=128, kv_len=100, block_size=(32, 32))
    dense = layout.repeat_interleave(64, 0).repeat_interleave(64, 1)[:128, :100]
    assert torch.equal(bm.to_dense()[0, 0], dense)
    assert bm.full_tiles > 0 and bm.partial_tiles > 0  # interior tiles full, the S boundary partial
    q, k, v = _qkv(1, 1, 1, 128, 100, 32, torch.float32)
    assert_attention_matches(blocksparse_attention(q, k, v, bm), q, k, v, dense)


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 70), S=st.integers(1, 70), tile=st.sampled_from([(16, 16), (32, 16), (16, 64), (32, 128)]),
       density=st.floats(0.0, 1.0), causal=st.booleans(), groups=st.sampled_from([(1, 1), (2, 1), (1, 3)]),
       seed=st.integers(0, 2**16))
def test_block_mask_round_trip(L, S, tile, density, causal, groups, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(*groups, L, S, generator=gen) < density
    bm = block_mask(mask, causal=causal, block_size=tile)
    want = mask & torch.ones(L, S, dtype=torch.bool).tril() if causal else mask
    assert torch.equal(bm.to_dense(), want)
    assert bm.nnz == int(want.sum())
    nm, nn = bm.n_row_blocks, bm.n_col_blocks
    assert bm.full_offsets.shape == (bm.groups * nm + 1,) and bm.full_offsets_t.shape == (bm.groups * nn + 1,)
    assert int(bm.full_offsets[-1]) == int(bm.full_offsets_t[-1]) == bm.full_tiles
    assert int(bm.part_offsets[-1]) == int(bm.part_offsets_t[-1]) == bm.partial_tiles
    # the transposed lists name the same partial tiles with the same bitmasks
    rows = torch.repeat_interleave(torch.arange(bm.groups * nm), torch.diff(bm.part_offsets.long()))
    fwd = {(int(r) // nm, int(r) % nm, int(c)): i for i, (r, c) in enumerate(zip(rows, bm.part_cols))}
    cols = torch.repeat_interleave(torch.arange(bm.groups * nn), torch.diff(bm.part_offsets_t.long()))
    bwd = {(int(c) // nn, int(r), int(c) % nn): int(b) for c, r, b in zip(cols, bm.part_rows_t, bm.part_bits_t)}
    assert fwd == bwd
    assert sorted(bm.row_order.view(bm.groups, nm)[0].tolist()) == list(range(nm))


def test_pack_bits_round_trip():
    tiles = torch.rand(5, 16, 64) < 0.5
    tiles[0, 0] = True  # bit 31 set in both words: the sign bit of int32
    assert torch.equal(unpack_bits(pack_bits(tiles), 64), tiles)
    small = torch.rand(3, 16, 16) < 0.5
    assert torch.equal(unpack_bits(pack_bits(small), 16), small)


def test_block_mask_takes_one_int_for_square_tiles():
    mask = torch.rand(64, 64) < 0.3
    square, pair = block_mask(mask, block_size=32), block_mask(mask, block_size=(32, 32))
    assert (square.block_m, square.block_n) == (32, 32)
    assert torch.equal(square.bits, pair.bits) and torch.equal(square.part_cols, pair.part_cols)


def test_block_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="power of two"):
        block_mask(torch.ones(8, 8, dtype=torch.bool), block_size=(24, 32))
    with pytest.raises(TypeError, match="block_size must be an int or a"):
        block_mask(torch.ones(8, 8, dtype=torch.bool), block_size=(32, 32, 32))
    with pytest.raises(TypeError, match="bool"):
        block_mask(torch.ones(8, 8))
    with pytest.raises(ValueError, match="exactly one"):
        block_mask()
    bm = block_mask(torch.ones(40, 40, dtype=torch.bool), block_size=(16, 16))
    q = torch.randn(1, 1, 32, 16)
    with pytest.raises(ValueError, match="L=40"):
        blocksparse_attention(q, q, q, bm)


def test_custom_ops_pass_opcheck():
    import blockzoo.ops.triton.blocksparse_attention as bsa

    L, S, D = 40, 36, 16
    bm = block_mask(torch.rand(2, 1, L, S) < 0.3, block_size=(16, 16))
    q = torch.randn(2, 2, L, D, requires_grad=True)
    k, v = (torch.randn(2, 1, S, D, requires_grad=True) for _ in range(2))
    layout = (bm.full_offsets, bm.full_cols, bm.part_offsets, bm.part_cols, bm.bits, bm.row_order,
              bm.full_offsets_t, bm.full_rows_t, bm.part_offsets_t, bm.part_rows_t, bm.part_bits_t,
              torch.ones(2, S, dtype=torch.uint8))
    params = (1, 0, 16, 16, 0.25)
    torch.library.opcheck(bsa._attention.op, (q, k, v, *layout, *params))
    o, lse = bsa._attention.op(q, k, v, *layout, *params)
    torch.library.opcheck(bsa._attention.backward_op, (torch.randn_like(o), q, k, v, o.detach(), lse, *layout, *params),
                          test_utils=("test_schema", "test_faketensor"))
