"""linformer, nystrom and favor: limits where they equal softmax attention (float64), declared
capabilities, key padding, grouped-query inputs, favor's redraw schedule, and models from compose()."""
import pytest
import torch

import blockzoo
from blockzoo.blocks.attention.nystrom import iterative_pinv, segment_means
from blockzoo.ops import torch_ref
from helpers import assert_trains_and_reloads, rel_err

NAMES = ["linformer", "nystrom", "favor"]
B, H, D = 2, 4, 8
F64 = torch.float64
TASK = "task=copy" if "copy" in blockzoo.list_components("task") else "~task"


def build(name, max_seq_len=16, **fields):
    """The mechanism with its registered defaults (not its preset's: the limits below are the defaults')."""
    reg = blockzoo.registry("attention")
    return reg.build(name, num_heads=H, head_dim=D, max_seq_len=max_seq_len, **fields).to(F64)


def qkv(length, s=None, kv_heads=H, grad=False, scale=1.0):
    s = length if s is None else s
    shapes = [(B, H, length, D), (B, kv_heads, s, D), (B, kv_heads, s, D)]
    return tuple((torch.randn(*shape, dtype=F64) * scale).requires_grad_(grad) for shape in shapes)


def padding(length):
    pad = torch.zeros(B, length, dtype=torch.bool)
    pad[0, length - 5:] = True
    pad[1, 2] = True
    return pad


def refill_padded(t, pad):
    """t with the entries at padded key positions replaced by fresh noise."""
    return torch.where(pad[:, None, :, None], torch.randn_like(t) * 10, t)


# --------------------------------------------------------------------------------------------
# Every mechanism
# --------------------------------------------------------------------------------------------
SUPPORTS = {  # causal, mask, key padding, cross, grid, fixed length, softcap, sinks, packed documents, decoding
    "linformer": (False, False, True, True, False, False, True, True, False, False),
    "nystrom": (False, False, True, False, False, False, False, False, False, False),
    "favor": (True, False, True, True, False, False, False, False, False, False),
}


@pytest.mark.parametrize("name", NAMES)
def test_declared_capabilities_are_enforced(name):
    caps = blockzoo.registry("attention").get(name).cls.capabilities()
    assert tuple(caps.values()) == SUPPORTS[name]
    assert "(no docstring)" not in blockzoo.describe("attention", name)
    att = build(name)
    q, k, v = qkv(16)
    with pytest.raises(ValueError, match="mask"):
        att(q, k, v, mask=torch.ones(16, 16, dtype=torch.bool))
    if not caps["causal"]:
        with pytest.raises(ValueError, match="causal"):
            att(q, k, v, causal=True)
    if not caps["cross"]:
        with pytest.raises(ValueError):
            att(q[:, :, :9], k, v)


@pytest.mark.parametrize("kv_heads", [H, 2, 1])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_finite(name, kv_heads):
    att = build(name, **({"conv_kernel_size": 3} if name == "nystrom" else {})).train()
    q, k, v = qkv(16, kv_heads=kv_heads, grad=True)
    causal = att.supports_causal
    out = att(q, k, v, causal=causal, key_padding_mask=padding(16))
    assert out.shape == (B, H, 16, D) and out.dtype == F64
    out.backward(torch.randn_like(out))
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    for pname, p in att.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("name", NAMES)
def test_grouped_query_matches_repeated_heads(name, kv_heads):
    att = build(name).eval()
    q, k, v = qkv(16, kv_heads=kv_heads)
    expected = att(q, torch_ref.repeat_kv(k, H), torch_ref.repeat_kv(v, H))
    torch.testing.assert_close(att(q, k, v), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_padded_keys_do_not_leak(name):
    att = build(name, **({"num_landmarks": 4} if name == "nystrom" else {})).eval()
    q, k, v = qkv(16)
    pad = padding(16)
    out = att(q, k, v, key_padding_mask=pad)
    again = att(q, refill_padded(k, pad), refill_padded(v, pad), key_padding_mask=pad)
    if name == "nystrom":  # self-attention: padded queries also leave the landmarks
        again = att(refill_padded(q, pad), refill_padded(k, pad), refill_padded(v, pad), key_padding_mask=pad)
    rows = ~pad[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[rows], again[rows], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_fully_padded_sequence_gives_zeros(name):
    att = build(name).eval()
    q, k, v = qkv(16, scale=3.0)
    pad = padding(16)
    pad[1] = True
    out = att(q, k, v, causal=att.supports_causal, key_padding_mask=pad)
    assert torch.isfinite(out).all() and not out[1].any()


# --------------------------------------------------------------------------------------------
# linformer
# --------------------------------------------------------------------------------------------
def identity_linformer(length, **fields):
    att = build("linformer", max_seq_len=length, k=length, **fields)
    with torch.no_grad():
        for p in att.parameters():
            p.copy_(torch.eye(length, dtype=F64))
    return att


@pytest.mark.parametrize("share_kv", [False, True])
def test_linformer_identity_projections_equal_full_attention(share_kv):
    att = identity_linformer(16, share_kv=share_kv)
    assert len(list(att.parameters())) == (1 if share_kv else 2)
    for L in (16, 7):  # self- and cross-attention over all 16 keys
        q, k, v = qkv(L, 16)
        torch.testing.assert_close(att(q, k, v), torch_ref.attention(q, k, v), rtol=0, atol=1e-10)


def test_linformer_lengths():
    att = build("linformer", max_seq_len=16, k=4)
    q, k, v = qkv(10)
    manual = torch_ref.attention(q, torch.einsum("bhsd,sk->bhkd", k, att.proj_k[:10]),
                                 torch.einsum("bhsd,sk->bhkd", v, att.proj_v[:10]))
    torch.testing.assert_close(att(q, k, v), manual, rtol=0, atol=1e-10)  # S < max_seq_len: sliced E, F
    q, k, v = qkv(17)
    with pytest.raises(ValueError, match="max_seq_len"):
        att(q, k, v)
    with pytest.raises(ValueError):
        blockzoo.build("attention", "linformer", num_heads=H, head_dim=D)  # max_seq_len unset


# --------------------------------------------------------------------------------------------
# nystrom
# --------------------------------------------------------------------------------------------
def test_nystrom_with_every_token_a_landmark_is_softmax_attention():
    att = build("nystrom", num_landmarks=16, pinv_iterations=30)
    q, k, v = qkv(16)
    assert rel_err(att(q, k, v), torch_ref.attention(q, k, v)) < 1e-6
    capped = build("nystrom", num_landmarks=64, pinv_iterations=30)  # more landmarks than tokens: capped at L
    torch.testing.assert_close(capped(q, k, v), att(q, k, v), rtol=0, atol=1e-10)
    pad = padding(16)
    out = att(q, k, v, key_padding_mask=pad)
    ref = torch_ref.attention(q, k, v, mask=~pad[:, None, None, :])
    rows = ~pad[:, None, :, None].expand_as(out)
    assert rel_err(out[rows], ref[rows]) < 1e-6


def test_nystrom_approximation_improves_with_landmarks():
    # With the paper's 6 iterations; the truncated iteration regularises an ill-conditioned landmark
    # kernel, so many iterations with few landmarks can be worse (as with the exact pseudo-inverse).
    q, k, v = qkv(32, scale=0.5)
    ref = torch_ref.attention(q, k, v)
    errs = [rel_err(build("nystrom", num_landmarks=m, pinv_iterations=6)(q, k, v), ref) for m in (2, 8, 32)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.1


def test_nystrom_pieces():
    x = torch.randn(1, 1, 10, 3, dtype=F64)
    means = segment_means(x, 3)  # segments of 4, 3, 3 tokens
    expected = torch.stack([x[0, 0, :4].mean(0), x[0, 0, 4:7].mean(0), x[0, 0, 7:].mean(0)])
    torch.testing.assert_close(means[0, 0], expected, rtol=0, atol=1e-12)
    a = torch.softmax(torch.randn(2, 6, 6, dtype=F64), -1)
    torch.testing.assert_close(iterative_pinv(a, 40), torch.linalg.pinv(a), rtol=0, atol=1e-8)


def test_nystrom_conv_skip():
    att = build("nystrom", num_landmarks=4, conv_kernel_size=3)
    q, k, v = qkv(16)
    plain = build("nystrom", num_landmarks=4)
    skip = torch.nn.functional.conv2d(v, att.conv.weight, padding=(1, 0), groups=H)
    torch.testing.assert_close(att(q, k, v), plain(q, k, v) + skip, rtol=0, atol=1e-10)
    for bad in (dict(conv_kernel_size=4), dict(num_landmarks=0), dict(pinv_iterations=0)):
        with pytest.raises(ValueError):
            build("nystrom", **bad)


# --------------------------------------------------------------------------------------------
# favor
# --------------------------------------------------------------------------------------------
def test_favor_approaches_softmax_attention_as_features_grow():
    q, k, v = qkv(16, scale=0.5)
    ref = torch_ref.attention(q, k, v)
    errs = []
    for m in (16, 128, 1024):
        errs.append(sum(rel_err(build("favor", num_features=m)(q, k, v), ref) for _ in range(4)) / 4)
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.6 * errs[0] and errs[2] < 0.2


def naive_favor(att, q, k, v, causal, pad=None):
    """φ(q) φ(k)ᵀ with the masked prefix (and padded keys) removed, normalised per row: O(L²)."""
    keep = None if pad is None else ~pad[:, None, :, None]
    a = att.features(q, True) @ att.features(k, False, keep).transpose(-1, -2)
    if causal:
        a = a.tril()
    return (a @ v) / a.sum(-1, keepdim=True)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_favor_causal_equals_masked_prefix(chunk):
    att = build("favor", num_features=32, causal_chunk_size=chunk)
    q, k, v = qkv(13)
    pad = padding(13)
    torch.testing.assert_close(att(q, k, v, causal=True), naive_favor(att, q, k, v, True), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(att(q, k, v, causal=True, key_padding_mask=pad),
                               naive_favor(att, q, k, v, True, pad), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(att(q, k, v), naive_favor(att, q, k, v, False), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError):
        att(q[:, :, :7], k, v, causal=True)  # causal needs L == S


def test_favor_redraw_schedule_and_checkpoint():
    att = build("favor", num_features=16, redraw_interval=2).train()
    q, k, v = qkv(8)
    used = []  # the projection each training call ran with (a due redraw happens as the call starts)
    for _ in range(5):
        att(q, k, v)
        used.append(att.projection.clone())
    assert torch.equal(used[0], used[1]) and torch.equal(used[2], used[3])
    assert not torch.equal(used[1], used[2]) and not torch.equal(used[3], used[4])
    assert int(att.calls) == 5 and {"projection", "calls"} <= set(att.state_dict())
    fresh = build("favor", num_features=16, redraw_interval=2).train()
    fresh.load_state_dict(att.state_dict())
    assert torch.equal(fresh.projection, att.projection)
    att(q, k, v)
    fresh(q, k, v)  # the 6th call of both: a redraw is due on the 7th
    assert torch.equal(fresh.projection, att.projection)
    torch.manual_seed(1)
    fresh(q, k, v)
    torch.manual_seed(1)
    att(q, k, v)
    assert torch.equal(fresh.projection, att.projection)  # same schedule after loading
    att.eval()
    before = att.projection.clone()
    for _ in range(4):
        att(q, k, v)
    assert torch.equal(before, att.projection)  # evaluation never redraws
    for bad in (dict(dropout=0.1), dict(num_features=0), dict(redraw_interval=-1)):
        with pytest.raises(ValueError):
            build("favor", **bad)
    with pytest.raises(ValueError):
        blockzoo.build("attention", "favor")  # head_dim unset


# --------------------------------------------------------------------------------------------
# Through the configs and a model
# --------------------------------------------------------------------------------------------
SMALL = ["model.vocab_size=32", "model.dim_model=32", "model.num_layers=2", "model.max_seq_len=32",
         "model.num_kv_heads=2"]


@pytest.mark.parametrize("name", NAMES)
def test_builds_in_a_model_from_compose(name, tmp_path):
    model_name = "tiny_lm" if name == "favor" else "encoder_classifier"
    extra = [] if name == "favor" else ["model.num_classes=3"]
    cfg = blockzoo.compose([f"attention={name}", f"model={model_name}", TASK, *SMALL, *extra])
    assert cfg.attention.name == name
    model = blockzoo.build_model(cfg)
    tokens = torch.randint(0, 32, (2, 32))
    if name == "favor":
        batch = {"tokens": tokens, "targets": tokens.roll(-1, 1)}
    else:
        batch = {"tokens": tokens, "label": torch.tensor([0, 2]), "padding": padding(32)}
    args = (tokens,) if name == "favor" else (tokens, padding(32))
    assert_trains_and_reloads(model, batch, args, tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["linformer", "nystrom"])
def test_causal_model_refused(name):
    cfg = blockzoo.compose([f"attention={name}", "model=tiny_lm", TASK, *SMALL])
    with pytest.raises(ValueError, match="causal"):
        blockzoo.build_model(cfg)
