"""fourier_mix, pooling, visual, lambda, compositional and orthoformer: float64 references, declared
capabilities, grouped-query inputs, and models built from compose()."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_trains_and_reloads

import blockzoo
from blockzoo.blocks.attention.orthoformer import orthogonal_landmarks

NAMES = ["fourier_mix", "pooling", "visual", "lambda", "compositional", "orthoformer"]
B, H, D, L = 2, 4, 8, 16  # L = 16 is a 4x4 grid, so every mechanism here can run
MAX_LEN = 64
F64 = torch.float64


def build(name, **fields):
    return blockzoo.build("attention", name, num_heads=H, head_dim=D, max_seq_len=MAX_LEN, **fields).to(F64)


def qkv(length=L, s=None, kv_heads=H, grad=True):
    s = length if s is None else s
    shapes = [(B, H, length, D), (B, kv_heads, s, D), (B, kv_heads, s, D)]
    return tuple(torch.randn(*shape, dtype=F64, requires_grad=grad) for shape in shapes)


def merged(v):
    """(B, H, L, D) -> (B, L, H*D), the multi-head wrapper's head order."""
    return v.transpose(1, 2).reshape(v.shape[0], v.shape[2], -1)


def softmax_attention(q, k, v, keep=None):
    """Explicit float64 softmax(q kᵀ/√D) v with keys/values repeated for grouped-query inputs."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


# --------------------------------------------------------------------------------------------
# Every mechanism: registry, forward/backward, grouped-query, determinism, declared capabilities
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_with_preset_and_docs(name):
    assert name in blockzoo.list_components("attention")
    text = blockzoo.describe("attention", name)
    assert "supports: causal=" in text and "(no docstring)" not in text
    cfg = blockzoo.compose([f"attention={name}", "~task"])
    assert cfg.attention.name == name


@pytest.mark.parametrize("kv_heads", [H, 2, 1])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_finite_with_grouped_query(name, kv_heads):
    att = build(name)
    q, k, v = qkv(kv_heads=kv_heads)
    out = att(q, k, v)
    assert out.shape == (B, H, L, D) and out.dtype == F64
    out.backward(torch.randn_like(out))
    assert v.grad is not None
    for t in (q, k, v):
        assert t.grad is None or torch.isfinite(t.grad).all()
    for pname, p in att.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_deterministic(name):
    att = build(name).eval()
    q, k, v = qkv(grad=False)
    assert torch.equal(att(q, k, v), att(q, k, v))


def requests(att):
    """(capability, call that needs it) for causal, mask, key padding and cross-attention."""
    q, k, v = qkv(grad=False)
    kc, vc = k[:, :, :9], v[:, :, :9]
    pad = torch.zeros(B, L, dtype=torch.bool)
    return [("supports_causal", lambda: att(q, k, v, causal=True)),
            ("supports_mask", lambda: att(q, k, v, mask=torch.ones(L, L, dtype=torch.bool))),
            ("supports_key_padding", lambda: att(q, k, v, key_padding_mask=pad)),
            ("supports_cross", lambda: att(q, kc, vc))]


@pytest.mark.parametrize("name", NAMES)
def test_honours_or_refuses_as_declared(name):
    att = build(name)
    for flag, call in requests(att):
        if getattr(att, flag):
            assert call().shape == (B, H, L, D), flag
        else:
            with pytest.raises(ValueError, match="cannot|needs"):
                call()


KEY_PADDING = [n for n in NAMES if blockzoo.registry("attention").get(n).cls.supports_key_padding]


@pytest.mark.parametrize("name", KEY_PADDING)
def test_key_padding_hides_padded_tokens(name):
    """Changing padded tokens' q, k and v leaves every real token's output unchanged."""
    att = build(name).eval()
    q, k, v = qkv(grad=False)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -5:] = True
    out = att(q, k, v, key_padding_mask=pad)
    noisy = [t.clone() for t in (q, k, v)]
    for t in noisy:
        t[1, :, -5:] = 100 * torch.randn_like(t[1, :, -5:])
    out2 = att(*noisy, key_padding_mask=pad)
    real = ~pad
    assert torch.allclose(out.transpose(1, 2)[real], out2.transpose(1, 2)[real], atol=1e-12)


def test_invalid_settings_are_refused():
    for name, fields in [("fourier_mix", {"dropout": 0.1}), ("pooling", {"dropout": 0.1}),
                         ("fourier_mix", {"fft_norm": "unit"}), ("pooling", {"pool_size": 2}),
                         ("visual", {"kernel_size": 4}), ("orthoformer", {"num_landmarks": 0}),
                         ("compositional", {"num_rules": 0})]:
        with pytest.raises(ValueError, match="attention\\.|fft_norm|dropout"):
            build(name, **fields)
    for name in ("visual", "compositional"):
        with pytest.raises(ValueError, match="num_heads"):
            blockzoo.build("attention", name)
    with pytest.raises(ValueError, match="max_seq_len"):
        blockzoo.build("attention", "lambda", head_dim=D)


# --------------------------------------------------------------------------------------------
# fourier_mix against torch.fft
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["ortho", "backward"])
@pytest.mark.parametrize("kv_heads", [H, 2])
def test_fourier_mix_equals_fft_over_sequence_and_hidden(norm, kv_heads):
    q, k, v = qkv(length=13, kv_heads=kv_heads)
    out = build("fourier_mix", fft_norm=norm)(q, k, v)
    x = merged(v.repeat_interleave(H // kv_heads, 1)).to(torch.complex128)
    ref = torch.fft.fft(torch.fft.fft(x, dim=1), dim=2).real  # 1-D transforms, one axis at a time
    if norm == "ortho":
        ref = ref / math.sqrt(13 * H * D)
    ref = ref.view(B, 13, H, D).transpose(1, 2)
    assert torch.allclose(out, ref, atol=1e-10)
    g = torch.randn_like(out)
    assert torch.allclose(*(torch.autograd.grad(t, v, g, retain_graph=True)[0] for t in (out, ref)), atol=1e-10)


def test_fourier_mix_equals_cosine_sum():
    """Re(DFT2)[k, l] = Σ_m Σ_n x[m, n] cos(2π (mk/L + nl/N)), written out with no FFT."""
    q, k, v = qkv(length=5, grad=False)
    out = build("fourier_mix", fft_norm="backward")(q, k, v)
    x = merged(v)
    n_hidden = H * D
    m = torch.arange(5, dtype=F64)
    n = torch.arange(n_hidden, dtype=F64)
    seq = 2 * math.pi * m[:, None] * m[None, :] / 5  # (k, m)
    hid = 2 * math.pi * n[:, None] * n[None, :] / n_hidden  # (l, n)
    angle = seq[:, None, :, None] + hid[None, :, None, :]  # (k, l, m, n)
    ref = torch.einsum("klmn,bmn->bkl", torch.cos(angle), x).view(B, 5, H, D).transpose(1, 2)
    assert torch.allclose(out, ref, atol=1e-9)


# --------------------------------------------------------------------------------------------
# pooling against explicit loops
# --------------------------------------------------------------------------------------------
def pool_loops(v, size, pad=None, side=None):
    """PoolFormer by loops: mean of the existing, non-padded neighbours in the window, minus the token."""
    b_, h_, n, d_ = v.shape
    out = torch.zeros_like(v)
    r = size // 2
    for b in range(b_):
        for i in range(n):
            if side is None:
                window = [j for j in range(i - r, i + r + 1) if 0 <= j < n]
            else:
                row, col = divmod(i, side)
                window = [y * side + x for y in range(row - r, row + r + 1) for x in range(col - r, col + r + 1)
                          if 0 <= y < side and 0 <= x < side]
            window = [j for j in window if pad is None or not pad[b, j]]
            for h in range(h_):
                total = sum((v[b, h, j] for j in window), torch.zeros(d_, dtype=v.dtype))
                out[b, h, i] = total / max(len(window), 1) - v[b, h, i]
    return out


@pytest.mark.parametrize("size", [1, 3, 5])
def test_pooling_1d_equals_loops(size):
    v = torch.randn(B, 2, 7, 3, dtype=F64)
    pad = torch.zeros(B, 7, dtype=torch.bool)
    pad[1, 4:] = True
    att = blockzoo.build("attention", "pooling", pool_size=size)
    for padding in (None, pad):
        out = att(v, v, v, key_padding_mask=padding)
        assert torch.allclose(out, pool_loops(v, size, padding), atol=1e-12)


@pytest.mark.parametrize("side", [3, 4])
def test_pooling_2d_grid_equals_loops(side):
    v = torch.randn(B, 2, side * side, 3, dtype=F64)
    pad = torch.zeros(B, side * side, dtype=torch.bool)
    pad[0, -side:] = True
    att = blockzoo.build("attention", "pooling", pool_size=3, grid=True)
    assert att.requires_grid
    for padding in (None, pad):
        out = att(v, v, v, key_padding_mask=padding)
        assert torch.allclose(out, pool_loops(v, 3, padding, side), atol=1e-12)
    with pytest.raises(ValueError, match="perfect square"):
        att(*(torch.randn(B, 2, 10, 3, dtype=F64),) * 3)


# --------------------------------------------------------------------------------------------
# visual (large-kernel attention)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [16, 64])
def test_visual_grid_layout_matches_explicit_convolutions(length):
    att = build("visual")
    q, k, v = qkv(length=length, kv_heads=2, grad=False)
    out = att(q, k, v)
    assert out.shape == (B, H, length, D)
    side = math.isqrt(length)
    vr = v.repeat_interleave(2, 1)
    u = torch.empty(B, H * D, side, side, dtype=F64)
    for h in range(H):
        for d in range(D):
            for i in range(length):
                u[:, h * D + d, i // side, i % side] = vr[:, h, i, d]
    c = H * D
    a = F.conv2d(u, att.depthwise.weight, att.depthwise.bias, padding=2, groups=c)
    a = F.conv2d(a, att.dilated.weight, att.dilated.bias, padding=9, dilation=3, groups=c)
    a = F.conv2d(a, att.pointwise.weight, att.pointwise.bias)
    ref = (u * a).reshape(B, H, D, length).transpose(-1, -2)
    assert torch.allclose(out, ref, atol=1e-12)


def test_visual_refuses_non_square_length():
    with pytest.raises(ValueError, match="L=15 is not a perfect square"):
        build("visual")(*qkv(length=15, grad=False))


# --------------------------------------------------------------------------------------------
# lambda against the paper's lambdas built explicitly
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,s", [(9, 9), (6, 11)])
def test_lambda_equals_explicit_content_and_position_lambdas(length, s):
    att = build("lambda")
    with torch.no_grad():
        att.position.normal_()
    q, k, v = qkv(length=length, s=s, kv_heads=2, grad=False)
    out = att(q, k, v)
    k2, v2 = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    content = torch.softmax(k2, dim=2).transpose(-1, -2) @ v2  # (B, H, D, D)
    ref = torch.empty_like(out)
    for n in range(length):  # λᵖ_n = Σ_m E_{n-m} v_mᵀ, a (D, D) matrix per (batch, head)
        pos = sum(att.position[n - m + MAX_LEN - 1][:, None] * v2[:, :, m, None, :] for m in range(s))
        ref[:, :, n] = (q[:, :, n, None, :] @ (content + pos)).squeeze(-2)
    assert torch.allclose(out, ref, atol=1e-10)


def test_lambda_refuses_sequences_past_max_seq_len():
    att = blockzoo.build("attention", "lambda", num_heads=H, head_dim=D, max_seq_len=8).to(F64)
    with pytest.raises(ValueError, match="max_seq_len=8"):
        att(*qkv(length=9, grad=False))


# --------------------------------------------------------------------------------------------
# compositional
# --------------------------------------------------------------------------------------------
def rule_values(att, v):
    """Every rule's values (B, R, S, D) from the merged heads."""
    flat = merged(v.repeat_interleave(H // v.shape[1], 1)) @ att.rule_values.weight.T
    return flat.view(v.shape[0], v.shape[2], -1, D).transpose(1, 2)


@pytest.mark.parametrize("kv_heads", [H, 1])
def test_compositional_one_rule_is_attention_with_its_own_values(kv_heads):
    """num_rules=1: the rule softmax is 1, so out = softmax(q kᵀ/√D) V_1 with V_1 = v̄ W_1 shared by the heads."""
    att = build("compositional", num_rules=1)
    q, k, v = qkv(kv_heads=kv_heads)
    keep = torch.rand(L, L) < 0.7
    keep.fill_diagonal_(True)
    for mask, causal in [(None, False), (keep, False), (None, True)]:
        out = att(q, k, v, mask=mask, causal=causal)
        both = keep if mask is not None else (torch.ones(L, L, dtype=torch.bool).tril() if causal else None)
        v1 = rule_values(att, v)[:, :1].expand(B, kv_heads, L, D)
        ref = softmax_attention(q, k, v1, both)
        assert torch.allclose(out, ref, atol=1e-10)
        g = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
            assert torch.allclose(a, b, atol=1e-10)


def test_compositional_selects_over_rules_like_the_paper():
    att = build("compositional", num_rules=3, retrieval_dim=5)
    with torch.no_grad():
        att.retrieval_key.weight.normal_()
    q, k, v = qkv(kv_heads=2, grad=False)
    out = att(q, k, v, causal=True)
    tri = torch.ones(L, L, dtype=torch.bool).tril()
    values = rule_values(att, v)  # (B, R, L, D)
    cands = torch.stack([softmax_attention(q, k, values[:, r:r + 1].expand(B, 2, L, D), tri) for r in range(3)], 3)
    query = torch.einsum("bhld,hde->bhle", q, att.retrieval_query)
    scores = torch.einsum("bhle,bhlre->bhlr", query, cands @ att.retrieval_key.weight.T) / math.sqrt(5)
    ref = (torch.softmax(scores, -1)[..., None] * cands).sum(3)
    assert torch.allclose(out, ref, atol=1e-10)


def test_compositional_is_causal():
    att = build("compositional")
    q, k, v = qkv(grad=False)
    out = att(q, k, v, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 10:], v2[:, :, 10:] = torch.randn_like(k2[:, :, 10:]), torch.randn_like(v2[:, :, 10:])
    assert torch.allclose(att(q, k2, v2, causal=True)[:, :, :10], out[:, :, :10], atol=1e-12)


# --------------------------------------------------------------------------------------------
# orthoformer
# --------------------------------------------------------------------------------------------
def test_orthogonal_landmark_selection_prefers_orthogonal_rows():
    e = torch.eye(4, dtype=F64)
    rows = torch.stack([e[0], e[0] + 0.01 * e[1], e[1], 3 * e[2], e[0] - e[1]])[None, None]
    index, found = orthogonal_landmarks(rows, 3)
    assert index.flatten().tolist() == [0, 2, 3] and found.all()
    # the criterion is the largest |cos| to the picks, not their sum: c2 (0.35, 0.35) beats c1 (0.6, 0)
    c1, c2 = 0.6 * e[0] + 0.8 * e[2], 0.35 * (e[0] + e[1]) + math.sqrt(1 - 2 * 0.35 ** 2) * e[2]
    index, _ = orthogonal_landmarks(torch.stack([e[0], e[1], c1, c2])[None, None], 3)
    assert index.flatten().tolist() == [0, 1, 3]
    only = torch.tensor([[[False, True, True, False, True]]])
    index, found = orthogonal_landmarks(rows, 4, only)
    assert index.flatten().tolist()[:3] == [1, 2, 4] and found.flatten().tolist() == [True, True, True, False]


def test_orthoformer_with_all_queries_as_landmarks_approximates_full_attention():
    """With M = L every query is a landmark: out = softmax(q qᵀ/√D) softmax(q kᵀ/√D) v.

    That equals full attention when softmax(q qᵀ/√D) ≈ I, i.e. when the queries are mutually
    orthogonal with a large norm (here q qᵀ/√D = 40·I, so the error is about L·e⁻⁴⁰); keys are
    scaled so the q kᵀ scores stay O(1). On random queries the two differ: this is the loose
    check the approximation allows, not an identity.
    """
    att = build("orthoformer", num_landmarks=8)
    length, scale = 8, math.sqrt(40 * math.sqrt(D))
    basis = torch.linalg.qr(torch.randn(B, H, D, D, dtype=F64)).Q[..., :length].transpose(-1, -2)
    q = scale * basis
    k = torch.randn(B, H, length, D, dtype=F64) * 2 * math.sqrt(D) / scale  # q·k/√D has std 2
    v = torch.randn(B, H, length, D, dtype=F64)
    full = softmax_attention(q, k, v)
    assert torch.allclose(att(q, k, v), full, atol=1e-12)
    rough = build("orthoformer", num_landmarks=2)(q, k, v)
    assert (rough - full).abs().max() > 1e-3  # fewer landmarks than tokens really approximates


def test_orthoformer_equals_landmark_formula_and_clamps_landmarks():
    att = build("orthoformer", num_landmarks=5)
    q, k, v = qkv(kv_heads=2, grad=False)
    index, _ = orthogonal_landmarks(q, 5)
    lm = q.gather(2, index[..., None].expand(B, H, 5, D))
    ref = softmax_attention(q, lm, softmax_attention(lm, k, v))
    assert torch.allclose(att(q, k, v), ref, atol=1e-12)
    many = build("orthoformer", num_landmarks=100)(q, k, v)
    assert many.shape == (B, H, L, D) and torch.isfinite(many).all()


# --------------------------------------------------------------------------------------------
# Inside models built from compose()
# --------------------------------------------------------------------------------------------
TINY = ["model.dim_model=32", "model.num_layers=1", "model.num_heads=4", "model.vocab_size=32",
        f"model.max_seq_len={MAX_LEN}", "~task"]


def classifier(name, extra=()):
    cfg = blockzoo.compose([f"attention={name}", "model=encoder_classifier", "model.num_classes=4", *TINY, *extra])
    return blockzoo.build_model(cfg)


@pytest.mark.parametrize("name", NAMES)
def test_encoder_classifier_trains_saves_and_reloads(name, tmp_path):
    model = classifier(name, ["model.num_kv_heads=2"])
    tokens = torch.randint(1, 32, (B, L))
    padding = None
    if model.blocks[0].self_attn.attention.supports_key_padding:
        padding = torch.zeros(B, L, dtype=torch.bool)
        padding[1, -3:] = True
    batch = {"tokens": tokens, "label": torch.tensor([0, 3])}
    if padding is not None:
        batch["padding"] = padding
    assert_trains_and_reloads(model, batch, (tokens, padding), tmp_path / "ckpt")


def test_pooling_grid_and_visual_refuse_non_square_sequences_in_a_model():
    for name, extra in [("pooling", ["attention.grid=true"]), ("visual", [])]:
        model = classifier(name, extra)
        assert model(torch.randint(1, 32, (B, 64))).shape == (B, 4)
        with pytest.raises(ValueError, match="perfect square"):
            model(torch.randint(1, 32, (B, 20)))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "compositional"])
def test_decoder_lm_refuses_mechanisms_that_cannot_be_causal(name):
    cfg = blockzoo.compose([f"attention={name}", "model=tiny_lm", *TINY])
    with pytest.raises(ValueError, match=f"'{name}' cannot honour causal"):
        blockzoo.build_model(cfg)


def test_decoder_lm_with_compositional_is_causal():
    model = blockzoo.build_model(blockzoo.compose(["attention=compositional", "model=tiny_lm", *TINY])).eval()
    tokens = torch.randint(0, 32, (B, L))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 32
    assert torch.allclose(model(tokens)[:, :10], model(changed)[:, :10], atol=1e-6)
