"""blockzoo.ops.masks_2d: each 2-D pattern against a brute-force loop over token pairs (float64 definitions),
its block mask and block layout, and attention through masked_attention against the float64 reference."""
import itertools
import math

import pytest
import torch
from helpers import TOL, assert_attention_matches

from blockzoo import ops
from blockzoo.ops import torch_ref

GRIDS = [(1, 1), (1, 5), (4, 4), (3, 7), (6, 5)]


def brute(height, width, keep_pair):
    """(L, L) from ``keep_pair(ri, ci, rj, cj)`` evaluated on every (query, key) pair of the row-major grid."""
    L = height * width
    out = torch.zeros(L, L, dtype=torch.float64)
    for i, j in itertools.product(range(L), range(L)):
        out[i, j] = float(keep_pair(i // width, i % width, j // width, j % width))
    return out


def brute_keep(height, width, keep_pair):
    return brute(height, width, keep_pair).bool()


def swin_window(x, window_size, shift):
    """The window of coordinate x: windows start at shift, shift + w, ... and one before (0 .. shift)."""
    if x < shift:
        return -1
    return (x - shift) // window_size


REFERENCES = {  # case -> (kind, fields, pair predicate); p-norm distances written with math, in float64
    "axial_h": ("axial_h", {}, lambda ri, ci, rj, cj: ri == rj),
    "axial_v": ("axial_v", {}, lambda ri, ci, rj, cj: ci == cj),
    "local_2d": ("local_2d", dict(distance=2.5, p=2.0),
                 lambda ri, ci, rj, cj: math.hypot(ri - rj, ci - cj) < 2.5),
    "local_2d_l1": ("local_2d", dict(distance=3.0, p=1.0), lambda ri, ci, rj, cj: abs(ri - rj) + abs(ci - cj) < 3.0),
    "local_2d_p3": ("local_2d", dict(distance=2.2, p=3.0),
                    lambda ri, ci, rj, cj: (abs(ri - rj) ** 3 + abs(ci - cj) ** 3) ** (1 / 3) < 2.2),
    "local_2d_inf": ("local_2d", dict(distance=2.0, p=math.inf),
                     lambda ri, ci, rj, cj: max(abs(ri - rj), abs(ci - cj)) < 2.0),
    "swin": ("swin", dict(window_size=3, shift=0),
             lambda ri, ci, rj, cj: ri // 3 == rj // 3 and ci // 3 == cj // 3),
    "swin_shift": ("swin", dict(window_size=3, shift=2),
                   lambda ri, ci, rj, cj: swin_window(ri, 3, 2) == swin_window(rj, 3, 2)
                   and swin_window(ci, 3, 2) == swin_window(cj, 3, 2)),
    "dilated_2d": ("dilated_2d", dict(dilation=2),
                   lambda ri, ci, rj, cj: abs(ri - rj) % 2 == 0 and abs(ci - cj) % 2 == 0),
    "dilated_2d_3": ("dilated_2d", dict(dilation=3),
                     lambda ri, ci, rj, cj: abs(ri - rj) % 3 == 0 and abs(ci - cj) % 3 == 0),
}
KEEP_CASES = sorted(REFERENCES)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("case", KEEP_CASES)
def test_keep_pattern_against_brute_force(case, grid):
    kind, fields, pair = REFERENCES[case]
    got = ops.pattern_2d(kind, *grid, **fields)
    assert got.dtype == torch.bool and got.shape == (grid[0] * grid[1],) * 2
    assert torch.equal(got, brute_keep(*grid, pair))
    assert got.diagonal().all()  # every token keeps its own key


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_gaussian_bias_against_brute_force(grid, sigma):
    ref = brute(*grid, lambda ri, ci, rj, cj: math.log(math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * sigma ** 2))))
    got = ops.gaussian_2d_bias(*grid, sigma=sigma, dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ops.pattern_2d("gaussian_2d", *grid, sigma=sigma), ref.float(), rtol=TOL[torch.float32],
                               atol=1e-6)


@pytest.mark.parametrize("grid", [(4, 4), (3, 7), (9, 5)])
@pytest.mark.parametrize("kind", ["axial_h", "axial_v", "local_2d", "swin", "dilated_2d"])
def test_block_mask_form_is_the_pattern(kind, grid):
    fields = {"swin": dict(window_size=2, shift=1), "local_2d": dict(distance=1.5)}.get(kind, {})
    keep = ops.pattern_2d(kind, *grid, **fields)
    bm = ops.pattern_2d_block_mask(kind, *grid, block_size=16, **fields)
    assert torch.equal(bm.to_dense()[0, 0], keep)
    causal = ops.pattern_2d_block_mask(kind, *grid, block_size=(16, 32), causal=True, **fields)
    assert torch.equal(causal.to_dense()[0, 0].tril(), keep.tril())
    with pytest.raises(ValueError, match="gaussian_2d"):
        ops.pattern_2d_block_mask("gaussian_2d", *grid)


def test_axial_h_block_mask_skips_the_off_diagonal_blocks():
    bm = ops.pattern_2d_block_mask("axial_h", 4, 16, block_size=16)  # a grid row is exactly one tile
    assert bm.full_tiles == 4 and bm.partial_tiles == 0


@pytest.mark.parametrize("block", [1, 2, 3, 5])
def test_block_layout_covers_the_pattern(block):
    keep = ops.pattern_2d("local_2d", 5, 6, distance=1.5)
    lay = ops.block_layout(keep, block)
    nb = -(-30 // block)
    assert lay.shape == (nb, nb)
    for r, c in itertools.product(range(nb), range(nb)):
        assert bool(lay[r, c]) == bool(keep[r * block:(r + 1) * block, c * block:(c + 1) * block].any())
    stacked = ops.block_layout(torch.stack([keep, ~keep]), block)
    assert stacked.shape == (2, nb, nb) and torch.equal(stacked[0], lay)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", KEEP_CASES + ["gaussian_2d"])
def test_masked_attention_under_each_pattern(case, causal, dtype):
    height, width = 3, 5
    if case == "gaussian_2d":
        kind, fields = case, dict(sigma=1.3)
        ref_mask = brute(height, width, lambda ri, ci, rj, cj: -((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * 1.3 ** 2))
    else:
        kind, fields, pair = REFERENCES[case]
        ref_mask = brute_keep(height, width, pair)
    mask = ops.pattern_2d(kind, height, width, dtype=dtype, **fields)
    L = height * width
    q, k, v = (torch.randn(2, 3, L, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    out = ops.masked_attention(q, k, v, mask=mask, causal=causal)
    assert_attention_matches(out, q, k, v, ref_mask, causal)


def test_block_mask_attention_matches_reference():
    height, width = 4, 8
    bm = ops.pattern_2d_block_mask("swin", height, width, window_size=4, shift=2, block_size=16)
    ref_mask = brute_keep(height, width, lambda ri, ci, rj, cj: swin_window(ri, 4, 2) == swin_window(rj, 4, 2)
                          and swin_window(ci, 4, 2) == swin_window(cj, 4, 2))
    q, k, v = (torch.randn(1, 2, height * width, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert_attention_matches(ops.masked_attention(q, k, v, mask=bm), q, k, v, ref_mask)
    torch.testing.assert_close(ops.masked_attention(q, k, v, mask=bm).detach(),
                               torch_ref.attention(q, k, v, ref_mask).detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.pattern_2d("swim", 4, 4), ValueError, "did you mean 'swin'"),
    (lambda: ops.pattern_2d("axial_h", 0, 4), ValueError, "height"),
    (lambda: ops.pattern_2d("axial_v", 4, 2.0), TypeError, "width"),
    (lambda: ops.local_2d_keep(4, 4, distance=0), ValueError, "distance"),
    (lambda: ops.local_2d_keep(4, 4, distance=2, p=-1), ValueError, "p must"),
    (lambda: ops.gaussian_2d_bias(4, 4, sigma=0), ValueError, "sigma"),
    (lambda: ops.gaussian_2d_bias(4, 4, dtype=torch.int32), TypeError, "dtype"),
    (lambda: ops.swin_keep(4, 4, window_size=2, shift=2), ValueError, "shift"),
    (lambda: ops.swin_keep(4, 4, window_size=0), ValueError, "window_size"),
    (lambda: ops.dilated_2d_keep(4, 4, dilation=0), ValueError, "dilation"),
    (lambda: ops.block_layout(torch.ones(4, 4), 2), TypeError, "keep"),
    (lambda: ops.block_layout(torch.ones(4, 4, dtype=torch.bool), 0), ValueError, "block_size"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
