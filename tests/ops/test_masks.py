"""blockzoo.ops.masks against hand-written expectations (element loops over fresh random inputs)."""
import itertools

import pytest
import torch

from blockzoo.ops import apply_keep, as_4d, causal_keep, keep_from_key_padding, repeat_kv


def test_causal_keep():
    L, S = 5, 7
    got = causal_keep(L, S)
    assert got.dtype == torch.bool and got.shape == (L, S)
    for i, j in itertools.product(range(L), range(S)):
        assert bool(got[i, j]) == (j <= i)


def test_keep_from_key_padding():
    pad = torch.rand(3, 6) < 0.5
    got = keep_from_key_padding(pad, 3, 6)
    assert got.dtype == torch.bool and got.shape == (3, 1, 1, 6)
    for b, s in itertools.product(range(3), range(6)):
        assert bool(got[b, 0, 0, s]) == (not bool(pad[b, s]))


def test_keep_from_key_padding_rejects_bad_input():
    with pytest.raises(TypeError, match="must be bool"):
        keep_from_key_padding(torch.zeros(3, 6), 3, 6)
    with pytest.raises(ValueError, match=r"expected \(3, 5\)"):
        keep_from_key_padding(torch.zeros(3, 6, dtype=torch.bool), 3, 5)


def test_apply_keep_bool_is_and():
    mask = torch.rand(2, 1, 4, 5) < 0.5
    keep = torch.rand(4, 5) < 0.5
    got = apply_keep(mask, keep)
    assert got.dtype == torch.bool and got.shape == (2, 1, 4, 5)
    for b, i, j in itertools.product(range(2), range(4), range(5)):
        assert bool(got[b, 0, i, j]) == (bool(mask[b, 0, i, j]) and bool(keep[i, j]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_apply_keep_additive_fills_minus_inf(dtype):
    mask = torch.randn(4, 5).to(dtype)
    keep = torch.rand(2, 1, 1, 5) < 0.5  # broadcasts: the result takes the joint shape
    got = apply_keep(mask, keep)
    assert got.dtype == dtype and got.shape == (2, 1, 4, 5)
    for b, i, j in itertools.product(range(2), range(4), range(5)):
        want = mask[i, j] if keep[b, 0, 0, j] else float("-inf")
        assert got[b, 0, i, j].item() == want


def test_apply_keep_none_gives_the_other_side():
    mask, keep = torch.randn(3, 3), torch.rand(3, 3) < 0.5
    assert apply_keep(None, keep) is keep
    assert apply_keep(mask, None) is mask
    assert apply_keep(None, None) is None


def test_apply_keep_rejects_shapes_that_do_not_broadcast():
    with pytest.raises(RuntimeError):
        apply_keep(torch.rand(4, 5) < 0.5, torch.rand(4, 6) < 0.5)
    with pytest.raises(RuntimeError):
        apply_keep(torch.randn(4, 5), torch.rand(3, 5) < 0.5)


def test_as_4d():
    for shape in [(4, 5), (3, 4, 5), (2, 3, 4, 5)]:
        m = torch.rand(shape) < 0.5
        got = as_4d(m)
        assert got.shape == (1,) * (4 - len(shape)) + shape
        assert torch.equal(got.reshape(shape), m)


def test_repeat_kv():
    k = torch.randn(2, 2, 3, 4)
    got = repeat_kv(k, 6)
    assert got.shape == (2, 6, 3, 4)
    for h in range(6):
        assert torch.equal(got[:, h], k[:, h // 3])  # head h reads kv head h // (H / H_kv)
    assert repeat_kv(k, 2) is k
