"""The options that reproduce xFormers-era layouts: fourier_mix per_head, visual van_block, favor hyperbolic,
lambda key_softmax / position_lambda, compositional_paper. Each against an explicit float64 reference,
forward and backward, on fresh random inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

import blockzoo

B, H, D, L = 2, 4, 8, 16  # L = 16 is a 4x4 grid
F64 = torch.float64


def build(name, **fields):
    return blockzoo.build("attention", name, num_heads=H, head_dim=D, max_seq_len=L, **fields).to(F64)


def qkv(length=L):
    return tuple(torch.randn(B, H, length, D, dtype=F64, requires_grad=True) for _ in range(3))


def merged(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


def split(t):
    return t.unflatten(-1, (H, -1)).transpose(1, 2)


def assert_same_with_grads(module_out, reference_out, inputs):
    """Equal outputs, and equal input gradients for one random upstream gradient."""
    torch.testing.assert_close(module_out, reference_out, atol=1e-10, rtol=1e-10)
    upstream = torch.randn_like(module_out)
    got = torch.autograd.grad(module_out, inputs, upstream, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(reference_out, inputs, upstream, allow_unused=True)
    for g, w in zip(got, want):
        if w is None:
            assert g is None or g.abs().max() == 0
        else:
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_fourier_mix_per_head_transforms_each_head():
    q, k, v = qkv()
    out = build("fourier_mix", fft_norm="backward", per_head=True)(q, k, v)
    n = torch.arange(L, dtype=F64)
    d = torch.arange(D, dtype=F64)
    cos_l, cos_d = torch.cos(2 * math.pi * n[:, None] * n / L), torch.cos(2 * math.pi * d[:, None] * d / D)
    sin_l, sin_d = torch.sin(2 * math.pi * n[:, None] * n / L), torch.sin(2 * math.pi * d[:, None] * d / D)
    # Re(F_L X F_D) = C_L X C_D - S_L X S_D, per head
    ref = cos_l @ v @ cos_d - sin_l @ v @ sin_d
    assert_same_with_grads(out, ref, (q, k, v))
    assert (out - build("fourier_mix", fft_norm="backward")(q, k, v)).abs().max() > 1e-3  # not the merged FFT


def test_visual_van_block_adds_the_surrounding_convs_and_residual():
    att = build("visual", van_block=True)
    q, k, v = qkv()
    side, c = int(math.isqrt(L)), H * D
    x = merged(v).transpose(1, 2).reshape(B, c, side, side)
    u = F.gelu(F.conv2d(x, att.proj_in.weight, att.proj_in.bias))
    a = F.conv2d(u, att.depthwise.weight, att.depthwise.bias, padding=2, groups=c)
    a = F.conv2d(a, att.dilated.weight, att.dilated.bias, padding=9, dilation=3, groups=c)
    a = F.conv2d(a, att.pointwise.weight, att.pointwise.bias)
    y = F.conv2d(u * a, att.proj_out.weight, att.proj_out.bias) + x
    ref = split(y.flatten(2).transpose(1, 2))
    assert_same_with_grads(att(q, k, v), ref, (q, k, v))
    assert build("visual").proj_in is None


@pytest.mark.parametrize("causal", [False, True])
def test_favor_hyperbolic_features(causal):
    att = build("favor", num_features=12, feature_map="hyperbolic", redraw_interval=0).eval()
    assert att.projection.shape == (6, D)
    q, k, v = qkv()

    def phi(x):
        x = x * D ** -0.25
        p = x @ att.projection.T
        sq = (x * x).sum(-1, keepdim=True) / 2
        return torch.cat([torch.exp(p - sq), torch.exp(-p - sq)], -1)

    scores = phi(q) @ phi(k).transpose(-1, -2)
    if causal:
        scores = scores.tril()
    ref = (scores @ v) / scores.sum(-1, keepdim=True)
    assert_same_with_grads(att(q, k, v, causal=causal), ref, (q, k, v))


def test_favor_hyperbolic_needs_an_even_feature_count():
    with pytest.raises(ValueError, match="hyperbolic needs an even num_features"):
        build("favor", num_features=7, feature_map="hyperbolic")


def test_lambda_xformers_variant_equals_explicit_sums():
    att = build("lambda", key_softmax="channels", position_lambda="summed")
    q, k, v = qkv()
    keys = torch.softmax(k, dim=-1)  # over channels
    content = q @ (keys.transpose(-1, -2) @ v)
    table = att.position  # row n - m + L - 1 holds E_{n-m}
    summed = torch.stack([sum(table[n - m + L - 1] for m in range(L)) for n in range(L)])
    ref = content + (q * summed).sum(-1, keepdim=True) * v
    assert_same_with_grads(att(q, k, v), ref, (q, k, v))
    with pytest.raises(ValueError, match="position_lambda='summed' needs as many keys as queries"):
        att(q, k[:, :, :8], v[:, :, :8])


@pytest.mark.parametrize("fields", [{}, {"shared_projection": True, "num_rules": 4},
                                    {"qk_rule": True, "dim_attn": 16, "dim_selection": 5},
                                    {"nonlinear": True, "bias": False}])
def test_compositional_paper_equals_the_paper_layout(fields):
    att = build("compositional_paper", **fields)
    q, k, v = qkv()
    x, xk, xv = merged(q), merged(k), merged(v)
    R = att.cfg.num_rules
    qp = split(att.q_proj(x))
    kp = split((att.k_proj or att.q_proj)(xk))
    vp = (att.v_proj or att.q_proj)(xv).unflatten(-1, (R, -1)).transpose(1, 2)  # (B, R, S, vd)
    search = torch.softmax(qp @ kp.transpose(-1, -2) / math.sqrt(D), -1)  # (B, H, L, S)
    cand = torch.einsum("bhls,brsv->bhlrv", search, vp)
    query = att.value_q(x).unflatten(-1, (H, -1)).transpose(1, 2)  # (B, H, L, sel)
    if att.cfg.qk_rule:
        scores = torch.einsum("bhle,bhlre->bhlr", query, att.value_k(cand)) / math.sqrt(att.selection)
    else:
        pairs = torch.cat([cand, query[:, :, :, None].expand(-1, -1, -1, R, -1)], -1)
        scores = att.score_network(pairs)[..., 0]
    mixed = torch.einsum("bhlr,bhlrv->bhlv", torch.softmax(scores, -1), cand)
    ref = split(att.out_proj(merged(mixed)))
    assert_same_with_grads(att(q, k, v), ref, (q, k, v))


def test_compositional_paper_refuses_bad_widths():
    with pytest.raises(ValueError, match="num_rules=3 must be >= 1 and divide attention.dim_attn=32"):
        build("compositional_paper", num_rules=3)
    with pytest.raises(ValueError, match="shared q/k/v projection"):
        build("compositional_paper", shared_projection=True, dim_attn=16)
