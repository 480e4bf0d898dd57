"""MultiHeadAttention with distinct key/value inputs, other q/k and v widths and batch broadcasting, against a
float64 reference written with plain matmuls (forward and backward)."""
import copy
import math

import pytest
import torch
from helpers import TOL, rel_err

from blockzoo.blocks import MultiHeadAttention

pytestmark = pytest.mark.filterwarnings("ignore::blockzoo.BlockzooFallbackWarning")
D_MODEL, H, L, S = 24, 4, 5, 7
SDP = {"name": "scaled_dot_product"}


def projections64(mha: MultiHeadAttention, d_q: int, d_k: int, d_v: int) -> list:
    """(weight, bias) of q, k, v from the float64 copy ``mha``, read from its own layout."""
    if mha.cross:
        kv_w, kv_b = mha.kv_proj.weight, mha.kv_proj.bias
        return [(mha.q_proj.weight, mha.q_proj.bias), (kv_w[:d_k], kv_b[:d_k]), (kv_w[d_k:], kv_b[d_k:])]
    if mha.qkv_mode == "fused":
        w, b = mha.qkv_proj.weight, mha.qkv_proj.bias
        cuts = [(0, d_q), (d_q, d_q + d_k), (d_q + d_k, d_q + d_k + d_v)]
        return [(w[i:j], b[i:j]) for i, j in cuts]
    return [(m.weight, m.bias) for m in (mha.q_proj, mha.k_proj, mha.v_proj)]


def reference(mha64, x, key, value, dk, dv, kv_heads, causal):
    """Multi-head attention in float64 from matmuls: project, split heads, softmax(q kᵀ/√dk) v, merge, out."""
    (wq, bq), (wk, bk), (wv, bv) = projections64(mha64, H * dk, kv_heads * dk, kv_heads * dv)
    batch = max(x.shape[0], key.shape[0], value.shape[0])
    q = (x @ wq.T + bq).expand(batch, -1, -1)
    k = (key @ wk.T + bk).expand(batch, -1, -1)
    v = (value @ wv.T + bv).expand(batch, -1, -1)
    heads = []
    for h in range(H):
        g = h // (H // kv_heads)  # the kv head this query head shares
        qh, kh, vh = q[..., h * dk:(h + 1) * dk], k[..., g * dk:(g + 1) * dk], v[..., g * dv:(g + 1) * dv]
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(dk)
        if causal:
            scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).tril().logical_not(),
                                        float("-inf"))
        heads.append(torch.softmax(scores, -1) @ vh)
    return torch.cat(heads, -1) @ mha64.out_proj.weight.T + mha64.out_proj.bias


def check(mha: MultiHeadAttention, x, key, value, dk, dv, kv_heads, causal=False):
    mha64 = copy.deepcopy(mha).double()
    leaves = [t.detach().clone().requires_grad_() for t in (x, key, value)]
    leaves64 = [t.detach().double().requires_grad_() for t in (x, key, value)]
    distinct = key is not x or value is not x
    out = mha(leaves[0], key=leaves[1], value=leaves[2]) if distinct else mha(leaves[0])
    if not distinct:
        leaves64 = [leaves64[0]] * 3
    ref = reference(mha64, *leaves64, dk, dv, kv_heads, causal)
    g = torch.randn(ref.shape, dtype=torch.float64)
    out.backward(g.float())
    ref.backward(g)
    tol = 4 * TOL[torch.float32]
    assert out.shape == ref.shape and rel_err(out.detach(), ref.detach()) <= tol
    for got, want in zip(leaves, leaves64):
        if got.grad is not None:
            assert rel_err(got.grad, want.grad) <= tol
    for (name, p), (_, p64) in zip(mha.named_parameters(), mha64.named_parameters()):
        # the key bias's gradient is 0 in exact arithmetic (it shifts a query's scores by a constant): absolute there
        assert (p.grad.double() - p64.grad).norm() <= tol * max(p64.grad.norm().item(), 1.0), name


@pytest.mark.parametrize("layout", ["fused", "separate", "cross"])
@pytest.mark.parametrize("dims", [(None, None), (16, 40), (32, 8)])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_distinct_key_value_and_widths(layout, dims, kv_heads):
    dim_key, dim_value = dims
    qkv = "separate" if layout == "separate" else "fused"
    mha = MultiHeadAttention(D_MODEL, H, SDP, num_kv_heads=kv_heads, qkv=qkv, cross=layout == "cross",
                             dim_key=dim_key, dim_value=dim_value)
    dk, dv = (dim_key or D_MODEL) // H, (dim_value or D_MODEL) // H
    assert mha.out_proj.weight.shape == (D_MODEL, H * dv)
    x, key, value = torch.randn(3, L, D_MODEL), torch.randn(3, S, D_MODEL), torch.randn(3, S, D_MODEL)
    check(mha, x, key, value, dk, dv, kv_heads)


@pytest.mark.parametrize("dims", [(None, None), (16, 40)])
def test_self_attention_with_other_widths_causal(dims):
    mha = MultiHeadAttention(D_MODEL, H, SDP, causal=True, dim_key=dims[0], dim_value=dims[1])
    x = torch.randn(2, L, D_MODEL)
    check(mha, x, x, x, (dims[0] or D_MODEL) // H, (dims[1] or D_MODEL) // H, H, causal=True)


@pytest.mark.parametrize("batches", [(1, 3, 3), (3, 1, 1), (1, 3, 1), (3, 3, 1), (1, 1, 1)])
@pytest.mark.parametrize("layout", ["fused", "cross"])
def test_batch_broadcasting(batches, layout):
    mha = MultiHeadAttention(D_MODEL, H, SDP, cross=layout == "cross", dim_key=16, dim_value=32)
    bq, bk, bv = batches
    x, key, value = torch.randn(bq, L, D_MODEL), torch.randn(bk, S, D_MODEL), torch.randn(bv, S, D_MODEL)
    check(mha, x, key, value, 4, 8, H)


def test_defaults_key_from_context_value_from_key():
    mha = MultiHeadAttention(D_MODEL, H, SDP, cross=True, dim_value=16)
    x, context, value = torch.randn(2, L, D_MODEL), torch.randn(1, S, D_MODEL), torch.randn(2, S, D_MODEL)
    assert torch.allclose(mha(x, context), mha(x, key=context), atol=1e-6)  # broadcast context batch
    assert torch.allclose(mha(x, context, value=value), mha(x, key=context, value=value), atol=1e-6)
    self_mha = MultiHeadAttention(D_MODEL, H, SDP)
    key = torch.randn(2, S, D_MODEL)
    assert torch.allclose(self_mha(x, key=key), self_mha(x, key=key, value=key), atol=1e-6)
    assert torch.allclose(self_mha(x), self_mha(x, key=x, value=x))


def test_state_dict_names_unchanged():
    names = set(MultiHeadAttention(D_MODEL, H, SDP, dim_key=8, dim_value=16).state_dict())
    assert names == {"qkv_proj.weight", "qkv_proj.bias", "out_proj.weight", "out_proj.bias"}
    sep = MultiHeadAttention(D_MODEL, H, SDP, qkv="separate", dim_key=8, dim_value=16)
    assert sep.k_proj.weight.shape == (8, D_MODEL) and sep.v_proj.weight.shape == (16, D_MODEL)


def test_bad_widths_and_inputs():
    with pytest.raises(ValueError, match="num_heads=4 must divide dim_key=30"):
        MultiHeadAttention(D_MODEL, H, SDP, dim_key=30)
    with pytest.raises(ValueError, match="num_heads=4 must divide dim_value=6"):
        MultiHeadAttention(D_MODEL, H, SDP, dim_value=6)
    with pytest.raises(ValueError, match="must divide dim_model=30"):
        MultiHeadAttention(30, H, SDP)
    assert MultiHeadAttention(30, H, SDP, dim_key=32, dim_value=8)(torch.randn(1, 3, 30)).shape == (1, 3, 30)
    mha = MultiHeadAttention(D_MODEL, H, SDP)
    x = torch.randn(2, L, D_MODEL)
    with pytest.raises(ValueError, match=r"batches must be equal or 1.*key \(3, 7, 24\)"):
        mha(x, key=torch.randn(3, S, D_MODEL))
    with pytest.raises(ValueError, match="as many positions"):
        mha(x, key=torch.randn(2, S, D_MODEL), value=torch.randn(2, S + 1, D_MODEL))
    with pytest.raises(ValueError, match=r"value must be \(batch, seq, dim_model=24\)"):
        mha(x, value=torch.randn(2, L, 8))


@pytest.mark.parametrize("layout", ["fused", "cross", "separate"])
def test_no_bias_distinct_inputs(layout):
    mha = MultiHeadAttention(D_MODEL, H, SDP, bias=False, cross=layout == "cross", dim_value=8,
                             qkv="separate" if layout == "separate" else "fused")
    x, key, value = torch.randn(1, L, D_MODEL), torch.randn(2, S, D_MODEL), torch.randn(2, S, D_MODEL)
    wq, wk, wv = (w.detach().double() for w, _ in mha._projection_weights())
    assert all(b is None for _, b in mha._projection_weights())
    q = (x.double() @ wq.T).unflatten(-1, (H, -1)).transpose(1, 2)
    k = (key.double() @ wk.T).unflatten(-1, (H, -1)).transpose(1, 2)
    v = (value.double() @ wv.T).unflatten(-1, (H, -1)).transpose(1, 2)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D_MODEL // H), -1) @ v
    ref = att.transpose(1, 2).flatten(2) @ mha.out_proj.weight.detach().double().T
    assert rel_err(mha(x, key=key, value=value).detach(), ref) <= 2 * TOL[torch.float32]


@pytest.mark.parametrize("projections", ["out", "none"])
def test_without_input_projections_heads_are_slices_of_the_inputs(projections):
    D, H = 24, 3
    mha = MultiHeadAttention(D, H, {"name": "scaled_dot_product"}, projections=projections).double()
    assert not hasattr(mha, "q_proj") and not hasattr(mha, "qkv_proj")
    assert (mha.out_proj is None) == (projections == "none")
    x, mem = (torch.randn(2, n, D, dtype=torch.float64, requires_grad=True) for n in (5, 7))
    out = mha(x, key=mem)

    def heads(t):
        return t.unflatten(-1, (H, D // H)).transpose(1, 2)

    att = torch.softmax(heads(x) @ heads(mem).transpose(-1, -2) / math.sqrt(D // H), -1) @ heads(mem)
    ref = att.transpose(1, 2).reshape(2, 5, D)
    if projections == "out":
        ref = ref @ mha.out_proj.weight.T + mha.out_proj.bias
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(out)
    got, want = (torch.autograd.grad(y, (x, mem), g, retain_graph=True) for y in (out, ref))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_unprojected_modes_refuse_other_widths():
    with pytest.raises(ValueError, match="projections must be one of in_out, out, none"):
        MultiHeadAttention(16, 2, {"name": "scaled_dot_product"}, projections="identity")
    with pytest.raises(ValueError, match="dim_key=8: with projections='none'"):
        MultiHeadAttention(16, 2, {"name": "scaled_dot_product"}, projections="none", dim_key=8)
    with pytest.raises(ValueError, match="num_kv_heads=1: with projections='out'"):
        MultiHeadAttention(16, 2, {"name": "scaled_dot_product"}, projections="out", num_kv_heads=1)
