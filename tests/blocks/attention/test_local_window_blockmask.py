"""LocalAttention hands masked_attention its window as a band BlockMask (no dense (L, S) mask) when the
caller gives no mask: same keep set as ``window_mask``, same outputs and gradients on every CPU-runnable
path (dense, CSR through the compiled ops, block-sparse through the Triton interpreter) as float64
attention with the dense window."""
import sys

import pytest
import torch

import blockzoo
from blockzoo.blocks.attention import local
from blockzoo.blocks.attention.local import window_band, window_block_mask, window_mask
from blockzoo.ops.attention import analysis
from blockzoo.ops.attention import cost as cost_model
from blockzoo.ops import backend
from blockzoo.ops.block_mask import BlockMask, block_mask
from helpers import assert_attention_matches

OP = "masked_attention"
H, D = 2, 16
LISTS = ("full_offsets", "full_cols", "part_offsets", "part_cols", "full_offsets_t", "full_rows_t",
         "part_offsets_t", "part_rows_t", "row_order")


@pytest.fixture(autouse=True)
def _fresh_plans():
    analysis.clear_cache()
    yield
    analysis.clear_cache()


def _att(window: int):
    return blockzoo.build("attention", "local", window_size=window, num_heads=H, head_dim=D)


def _keep(L: int, S: int, window: int, causal: bool, padding: torch.Tensor | None = None) -> torch.Tensor:
    keep = window_mask(L, S, window)
    if causal:
        keep = keep & torch.ones(L, S, dtype=torch.bool).tril()
    return keep if padding is None else keep & ~padding[:, None, None, :]


def _qkv(B: int, L: int, S: int, dtype: torch.dtype):
    return tuple(torch.randn(B, H, n, D, dtype=dtype, requires_grad=True) for n in (L, S, S))


def _padding(B: int, S: int) -> torch.Tensor:
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, -(S // 3):] = True  # a padded tail: rows whose whole window is padding give zeros
    return pad


# ----------------------------------------------------------------------------------- keep sets
KEEP_CASES = [(L, S, w) for L, S in [(1, 1), (16, 16), (257, 257), (257, 100), (100, 257), (33, 97)]
              for w in (1, 2, 3, 4, 5, 64, 5000)] + [(1000, 1000, w) for w in (8, 9, 5000)]


@pytest.mark.parametrize("causal", [False, True])
def test_block_mask_keeps_exactly_window_mask(causal):
    for L, S, window in KEEP_CASES:
        _check_keep(L, S, window, causal)


def _check_keep(L, S, window, causal):
    want = _keep(L, S, window, causal)
    bm = window_block_mask(L, S, window, causal=causal)
    assert bm.band is not None and bm.causal == causal and bm.bits.shape[0] == 0
    assert torch.equal(bm.to_dense()[0, 0], want)
    assert bm.nnz == int(want.sum())
    assert analysis.stats_of_block_mask(bm).empty_rows == int((~want.any(-1)).sum())  # the dense path's shortcut
    # the tile lists equal a bitmask build of the dense window (what dispatch used to derive)
    ref = block_mask(want, causal=causal, block_size=(bm.block_m, bm.block_n), detect_band=False)
    for name in LISTS:
        assert torch.equal(getattr(bm, name), getattr(ref, name)), name
    assert (bm.full_tiles, bm.partial_tiles) == (ref.full_tiles, ref.partial_tiles)
    # and the CSR lists the CSR path builds from the band
    assert torch.equal(analysis.band_layout(L, S, *bm.band).to_dense(), want)


def test_window_band_even_and_odd():
    assert [window_band(w) for w in (1, 2, 3, 4, 5, 128)] == [(0, 0), (-1, 1), (-1, 1), (-2, 2), (-2, 2),
                                                              (-64, 64)]


def test_gpu_tile_is_the_cheapest_candidate(monkeypatch):
    """On the GPU the band's tile is the candidate the cost model rates cheapest (simulated on the CPU)."""
    monkeypatch.setattr(cost_model, "band_tiles", lambda device: cost_model.candidate_tiles("cuda"))
    L, window = 4096, 128
    bm = window_block_mask(L, L, window, causal=True)

    def cost(tile):
        b = block_mask(window=window_band(window), q_len=L, kv_len=L, causal=True, block_size=tile)
        return cost_model.estimate(analysis.stats_of_block_mask(b), (1, 1, L, L, 64), torch.bfloat16, True,
                                   False, "cuda")[0]["block_sparse"]

    assert cost((bm.block_m, bm.block_n)) == min(cost(t) for t in cost_model.candidate_tiles("cuda"))


# ------------------------------------------------------------------------- outputs and gradients
CASES = [  # (L, S, window, causal, key padding)
    (257, 257, 4, False, False),
    (257, 257, 5, True, True),
    (257, 100, 6, False, True),
    (100, 257, 7, True, False),
    (1000, 1000, 9, True, True),
    (40, 40, 128, False, True),  # window wider than the sequence
    (40, 40, 129, True, False),
]


def _check(L, S, window, causal, pad, dtype, path=None, monkeypatch=None, triton=False, B=None):
    B = B or (2 if pad else 1)
    q, k, v = _qkv(B, L, S, dtype)
    padding = _padding(B, S) if pad else None
    if path is not None:
        monkeypatch.setenv("BLOCKZOO_ATTENTION_PATH", path)
    with backend.force("triton" if triton else "auto"):
        out = _att(window)(q, k, v, causal=causal, key_padding_mask=padding)
    if path is not None:
        assert blockzoo.ops.last_path(OP) == path
    assert_attention_matches(out, q, k, v, _keep(L, S, window, causal, padding))


@pytest.mark.parametrize("L,S,window,causal,pad", [(257, 257, 5, True, True), (257, 100, 6, False, True),
                                                   (1000, 1000, 8, False, False)])  # csr or dense, as planned
def test_planned_path_matches_float64(L, S, window, causal, pad):
    _check(L, S, window, causal, pad, torch.float64)


@pytest.mark.parametrize("L,S,window,causal,pad", CASES)
@pytest.mark.parametrize("path", ["dense", "csr"])
def test_dense_and_csr_paths_match_float64(L, S, window, causal, pad, path, monkeypatch):
    _check(L, S, window, causal, pad, torch.float64, path, monkeypatch)


@pytest.mark.parametrize("L,S,window,causal,pad", [(257, 100, 5, True, True), (100, 257, 6, False, True),
                                                   (40, 40, 129, False, False)])
def test_block_sparse_path_matches_float64(L, S, window, causal, pad, monkeypatch):
    _check(L, S, window, causal, pad, torch.float32, "block_sparse", monkeypatch, triton=True, B=1)


@pytest.mark.parametrize("user_dtype", [torch.bool, torch.float64])
def test_user_mask_still_combines_with_the_dense_window(user_dtype):
    L, window = 65, 6
    q, k, v = _qkv(1, L, L, torch.float64)
    user = torch.rand(L, L) < 0.7
    mask = user if user_dtype == torch.bool else torch.zeros(L, L, dtype=torch.float64).masked_fill(
        ~user, float("-inf"))
    att = _att(window)
    out = att(q, k, v, mask=mask, causal=True)
    assert not att._block_cache and list(att._mask_cache) == [(L, L, q.device)]
    assert_attention_matches(out, q, k, v, _keep(L, L, window, True) & user)


# -------------------------------------------------------------------------- no dense (L, S) mask
def test_no_dense_mask_is_cached_or_passed(monkeypatch):
    L, S, window = 1000, 900, 8
    seen = []
    real = blockzoo.ops.masked_attention

    def spy(q, k, v, mask=None, **kw):
        seen.append((mask, kw["causal"]))
        return real(q, k, v, mask=mask, **kw)

    monkeypatch.setattr(blockzoo.ops, "masked_attention", spy)
    att = _att(window)
    x, y = torch.randn(1, H, L, D), torch.randn(1, H, S, D)
    for causal in (False, True, True):
        att(x, y, y, causal=causal)
    assert [type(m) for m, _ in seen] == [BlockMask] * 3
    assert [(m.band, m.causal, c) for m, c in seen] == [((-4, 4), False, False), ((-4, 0), True, True),
                                                      ((-4, 0), True, True)]
    assert seen[1][0] is seen[2][0]  # cached per (L, S, device, causal)
    assert not att._mask_cache and len(att._block_cache) == 2
    for bm in att._block_cache.values():
        sizes = [t.numel() for t in vars(bm).values() if isinstance(t, torch.Tensor)]
        assert max(sizes) < L * S // 100, sizes
    assert analysis.cache_info()["analyses"] == 2  # one statistics object per BlockMask, then plan-cache hits


@pytest.mark.parametrize("path,triton", [("block_sparse", True), ("csr", False), ("csr", True)])
def test_sparse_paths_never_expand_the_window(path, triton, monkeypatch):
    """block_sparse (band from indices) and csr (lists from the band) run with every dense builder broken."""
    def boom(*a, **kw):
        raise AssertionError("a dense (L, S) window mask was built")

    monkeypatch.setattr(local, "window_mask", boom)
    monkeypatch.setattr(BlockMask, "to_dense", boom)
    monkeypatch.setattr(sys.modules["blockzoo.ops.block_mask"], "band_dense", boom)
    monkeypatch.setattr(analysis, "keep_with_causal", boom)
    monkeypatch.setenv("BLOCKZOO_ATTENTION_PATH", path)
    L, window = 129, 10
    q, k, v = _qkv(1, L, L, torch.float32)
    with backend.force("triton" if triton else "auto"):
        out = _att(window)(q, k, v, causal=True)
    assert blockzoo.ops.last_path(OP) == path
    monkeypatch.undo()
    assert_attention_matches(out, q, k, v, _keep(L, L, window, True))
