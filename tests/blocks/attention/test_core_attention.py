"""scaled_dot_product, local and the multi-head wrapper against an explicit float64 softmax(QKᵀ)V."""
import math

import pytest
import torch

import blockzoo
from blockzoo.blocks.attention.local import window_mask
from blockzoo.blocks.multi_head import MultiHeadAttention

B, H, L, S, D = 2, 4, 13, 11, 8


def reference(q, k, v, keep=None, additive=None):
    """Explicit float64 attention; rows with nothing kept give zeros."""
    q, k, v = q.double(), k.double(), v.double()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if additive is not None:
        s = s + additive.double()
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    m = s.amax(-1, keepdim=True)
    empty = torch.isneginf(m)
    p = torch.exp(s - torch.where(empty, 0.0, m))
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-300)
    p = torch.where(empty, 0.0, p)
    return p @ v


def qkv(L=L, S=S, kv_heads=H, dtype=torch.float64):
    q = torch.randn(B, H, L, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, kv_heads, S, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, kv_heads, S, D, dtype=dtype, requires_grad=True)
    return q, k, v


def sdp():
    return blockzoo.build("attention", "scaled_dot_product", num_heads=H, head_dim=D)


def check(out, ref, inputs):
    assert torch.allclose(out, ref, atol=1e-10), (out - ref).abs().max()
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, inputs, g)
    refs = torch.autograd.grad(ref, inputs, g)
    for a, b in zip(grads, refs):
        assert torch.allclose(a, b, atol=1e-9), (a - b).abs().max()


@pytest.mark.parametrize("kv_heads", [H, 2, 1])
def test_no_mask_and_gqa(kv_heads):
    q, k, v = qkv(kv_heads=kv_heads)
    check(sdp()(q, k, v), reference(q, k, v), (q, k, v))


def test_causal():
    q, k, v = qkv(L=L, S=L)
    keep = torch.ones(L, L, dtype=torch.bool).tril()
    check(sdp()(q, k, v, causal=True), reference(q, k, v, keep), (q, k, v))


@pytest.mark.parametrize("shape", [(L, S), (B, 1, L, S), (B, H, L, S), (1, H, 1, S)])
def test_bool_mask_broadcast_with_empty_rows(shape):
    q, k, v = qkv()
    keep = torch.rand(shape) < 0.4
    if len(shape) == 2 or shape[-2] > 1:
        keep[..., 0, :] = False  # a fully masked row gives zeros, not NaN
    out = sdp()(q, k, v, mask=keep)
    assert torch.isfinite(out).all()
    check(out, reference(q, k, v, keep.expand(B, H, L, S)), (q, k, v))


def test_additive_mask_with_inf_rows():
    q, k, v = qkv()
    add = torch.randn(L, S, dtype=torch.float64)
    add[3] = float("-inf")
    add[5, :4] = float("-inf")
    out = sdp()(q, k, v, mask=add)
    keep = ~torch.isneginf(add)
    check(out, reference(q, k, v, keep, torch.where(keep, add, 0.0)), (q, k, v))


def test_key_padding_and_causal_with_mask():
    q, k, v = qkv(L=L, S=L)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, -3:] = True
    user = torch.rand(L, L) < 0.7
    keep = user & torch.ones(L, L, dtype=torch.bool).tril() & ~pad[:, None, None, :]
    out = sdp()(q, k, v, mask=user, causal=True, key_padding_mask=pad)
    check(out, reference(q, k, v, keep), (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_local_window(causal):
    q, k, v = qkv(L=L, S=L)
    att = blockzoo.build("attention", "local", window_size=4, num_heads=H, head_dim=D)
    keep = window_mask(L, L, 4)
    if causal:
        keep = keep & torch.ones(L, L, dtype=torch.bool).tril()
    check(att(q, k, v, causal=causal), reference(q, k, v, keep), (q, k, v))


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, v: (q, k[:, :, :, :4], v[:, :, :, :4]), "head dim"),
    (lambda q, k, v: (q, k[:, :3], v[:, :3]), "not a multiple"),
    (lambda q, k, v: (q.float(), k, v), "dtypes differ"),
    (lambda q, k, v: (q[0], k, v), r"\(B, H, L, D\)"),
])
def test_bad_inputs_raise(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sdp()(*bad(*qkv()))


def test_wrong_mask_size_raises():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="does not broadcast"):
        sdp()(q, k, v, mask=torch.ones(L, S + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool .* or floating"):
        sdp()(q, k, v, mask=torch.ones(L, S, dtype=torch.int64))
    with pytest.raises(ValueError, match="key_padding_mask has shape"):
        sdp()(q, k, v, key_padding_mask=torch.zeros(B, S + 1, dtype=torch.bool))


@pytest.mark.parametrize("qkv_mode", ["fused", "separate"])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_multi_head_matches_manual_projection(qkv_mode, kv_heads):
    d = H * D
    mha = MultiHeadAttention(d, H, {"name": "scaled_dot_product"}, num_kv_heads=kv_heads, qkv=qkv_mode,
                             causal=True).double()
    x = torch.randn(B, L, d, dtype=torch.float64)
    if qkv_mode == "fused":
        q, k, v = mha.qkv_proj(x).split([d, kv_heads * D, kv_heads * D], -1)
    else:
        q, k, v = mha.q_proj(x), mha.k_proj(x), mha.v_proj(x)
    q = q.view(B, L, H, D).transpose(1, 2)
    k = k.view(B, L, kv_heads, D).transpose(1, 2)
    v = v.view(B, L, kv_heads, D).transpose(1, 2)
    ref = reference(q, k, v, torch.ones(L, L, dtype=torch.bool).tril())
    ref = mha.out_proj(ref.transpose(1, 2).reshape(B, L, d))
    assert torch.allclose(mha(x), ref, atol=1e-10)


def test_rotary_rotates_head_dim_and_is_relative():
    from blockzoo.blocks.embedding.rotary import Rotary

    rot = Rotary(D).double()
    q = torch.randn(1, 1, 1, D, dtype=torch.float64).expand(1, 1, 6, D)
    k = torch.randn(1, 1, 1, D, dtype=torch.float64).expand(1, 1, 6, D)
    scores = rot(q) @ rot(k).transpose(-1, -2)
    # same content at every position: the score depends only on the offset i - j
    assert torch.allclose(scores[0, 0, 3, 1], scores[0, 0, 4, 2]) and torch.allclose(scores[0, 0, 5, 0], scores[0, 0, 6 - 1, 0])
    assert torch.allclose(rot(q).norm(dim=-1), q.norm(dim=-1))
    with pytest.raises(ValueError, match="rotary expects head dim"):
        rot(torch.randn(1, 1, 3, D + 2))


def test_multi_head_num_heads_must_divide():
    with pytest.raises(ValueError, match="must divide dim_model"):
        MultiHeadAttention(30, 4, {"name": "scaled_dot_product"})
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide"):
        MultiHeadAttention(32, 4, {"name": "scaled_dot_product"}, num_kv_heads=3)


def test_cross_attention_context_of_another_batch_raises_naming_both_shapes():
    mha = MultiHeadAttention(32, 4, {"name": "scaled_dot_product"}, cross=True)
    x, context = torch.randn(2, 5, 32), torch.randn(3, 7, 32)
    with pytest.raises(ValueError, match=r"query x \(2, 5, 32\), context \(3, 7, 32\)"):
        mha(x, context)
    assert mha(x, context[:2]).shape == (2, 5, 32)
