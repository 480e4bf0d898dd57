"""The attention knobs as config fields: qk_norm in the multi-head wrapper, softcap and sinks in every
softmax mechanism (against the float64 reference, forward and backward), refused with the config path
by mechanisms without a softmax, saved and reloaded with the model."""
import pytest
import torch

import blockzoo
from blockzoo import ops
from blockzoo.blocks.attention.qk_norm import QKNorm
from blockzoo.blocks.multi_head import MultiHeadAttention
from blockzoo.config import ConfigError, config_to_dict
from blockzoo.registry import registry
from tests.helpers import assert_trains_and_reloads, rel_err
from tests.ops.attention.test_attention_knobs import reference

B, H, L, D = 2, 4, 12, 8
SOFTMAX = ["scaled_dot_product", "local", "alibi", "global", "random", "blocksparse", "linformer", "compositional"]


def build(name: str, **fields):
    extra = {"blocksparse": {"block_size": 4}, "local": {"window_size": 5}}.get(name, {})
    return registry("attention").build({"name": name, **extra, **fields}, num_heads=H, head_dim=D,
                                       max_seq_len=L).double()


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(2 * torch.randn(B, H, L, D, generator=g, dtype=torch.float64)).requires_grad_() for _ in range(3)]


def test_every_attention_either_takes_the_logit_knobs_or_refuses_them_with_the_config_path():
    for name in registry("attention").names():
        cls = registry("attention").get(name).cls
        if name in SOFTMAX:
            assert cls.supports_logit_knobs, name
            assert cls.capabilities()["softcap"] and cls.capabilities()["sinks"]
            continue
        if not getattr(cls, "supports_logit_knobs", False):
            with pytest.raises(ConfigError, match=rf"model\.attention\.softcap=2\.0: attention '{name}' has no"):
                registry("attention").build({"name": name, "softcap": 2.0}, path="model.attention")
            with pytest.raises(ConfigError, match=rf"model\.attention\.sinks=True: attention '{name}'"):
                registry("attention").build({"name": name, "sinks": True}, path="model.attention")


@pytest.mark.parametrize("bad,match", [
    ({"softcap": 0.0}, r"attention\.softcap=0\.0: expected None or > 0"),
    ({"softcap": -30.0}, r"attention\.softcap=-30\.0: expected None or > 0"),
    ({"qk_norm": "rsm"}, r"attention\.qk_norm='rsm': expected one of none, rms, layer.*rms"),
    ({"qk_norm_eps": 0.0}, r"attention\.qk_norm_eps=0\.0: expected > 0"),
])
def test_bad_knob_values_name_their_config_path(bad, match):
    with pytest.raises(ConfigError, match=match):
        registry("attention").build({"name": "scaled_dot_product", **bad}, num_heads=H, head_dim=D)


def test_sinks_need_the_number_of_heads():
    with pytest.raises(ConfigError, match=r"attention\.sinks=True needs attention\.num_heads >= 1"):
        registry("attention").build({"name": "scaled_dot_product", "sinks": True})


def _static_mask(att, name):
    """(keep, bias) the mechanism applies (its static pattern), for the reference."""
    if name == "scaled_dot_product":
        return None, None
    if name == "local":
        return att.pattern(L, L, torch.device("cpu"))[None, None], None
    pat = att.pattern(L, L, torch.device("cpu"))  # (H or 1, L, S): bool keep or additive bias
    if pat.dtype == torch.bool:
        return pat[None], None
    return None, pat[None]


@pytest.mark.parametrize("name", ["scaled_dot_product", "local", "alibi", "global", "random"])
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_mechanisms_apply_softcap_and_sinks(name, causal):
    att = build(name, softcap=3.0, sinks=True)
    with torch.no_grad():
        att.sink_logits.copy_(torch.randn(H, dtype=torch.float64))
    q, k, v = qkv()
    out = att(q, k, v, causal=causal)
    keep, bias = _static_mask(att, name)
    ref = reference(q, k, v, keep, bias, causal, 3.0, att.sink_logits)
    grad = torch.randn(ref.shape, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v, att.sink_logits), grad)
    want = torch.autograd.grad(ref, (q, k, v, att.sink_logits), grad)
    assert rel_err(out.detach(), ref.detach()) < 1e-10
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("name", ["blocksparse", "linformer", "compositional"])
def test_other_softmax_mechanisms_pass_the_knobs_to_masked_attention(name, monkeypatch):
    att = build(name, softcap=3.0, sinks=True)
    seen = {}
    real = ops.masked_attention

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "masked_attention", spy)
    q, k, v = qkv()
    out = att(q, k, v)
    assert seen["softcap"] == 3.0 and seen["sink_logits"] is att.sink_logits
    out.sum().backward()
    assert att.sink_logits.grad is not None and torch.isfinite(att.sink_logits.grad).all()


def _norm_ref(x, w, kind, eps):
    if kind == "rms":
        y = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    else:
        mu = x.mean(-1, keepdim=True)
        y = (x - mu) * torch.rsqrt((x - mu).square().mean(-1, keepdim=True) + eps)
    return y * w[:, None, :]


@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("rotary", [False, True])
def test_qk_norm_in_the_wrapper_matches_float64_reference(kind, rotary):
    torch.manual_seed(0)
    d, kv = 32, 2
    mha = MultiHeadAttention(d, H, {"name": "scaled_dot_product", "qk_norm": kind}, num_kv_heads=kv,
                             rotary=rotary, causal=True).double()
    with torch.no_grad():
        mha.qk_norm.q_weight.copy_(1 + 0.3 * torch.randn(H, d // H))
        mha.qk_norm.k_weight.copy_(1 + 0.3 * torch.randn(kv, d // H))
    x = torch.randn(B, L, d, dtype=torch.float64, requires_grad=True)
    out = mha(x)
    hd = d // H
    q, k, v = mha.qkv_proj(x).split([d, kv * hd, kv * hd], -1)
    q = q.view(B, L, H, hd).transpose(1, 2)
    k = k.view(B, L, kv, hd).transpose(1, 2)
    v = v.view(B, L, kv, hd).transpose(1, 2)
    q = _norm_ref(q, mha.qk_norm.q_weight, kind, 1e-6)
    k = _norm_ref(k, mha.qk_norm.k_weight, kind, 1e-6)
    if rotary:
        q, k = mha.rotary(q), mha.rotary(k)
    ref = reference(q, k, v, causal=True)
    ref = mha.out_proj(ref.transpose(1, 2).reshape(B, L, d))
    params = (x, mha.qk_norm.q_weight, mha.qk_norm.k_weight)
    grad = torch.randn(ref.shape, dtype=torch.float64)
    got = torch.autograd.grad(out, params, grad)
    want = torch.autograd.grad(ref, params, grad)
    assert rel_err(out.detach(), ref.detach()) < 1e-10
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-9
    assert set(mha.state_dict()) >= {"qk_norm.q_weight", "qk_norm.k_weight"}


def test_qk_norm_refuses_a_wrong_head_count():
    with pytest.raises(ValueError, match=r"qk_norm expects q of shape \(B, 4, L, 8\)"):
        QKNorm("rms", 4, 2, 8)(torch.randn(1, 3, 5, 8), torch.randn(1, 2, 5, 8))


def test_no_knobs_adds_no_parameters():
    mha = MultiHeadAttention(32, H, {"name": "scaled_dot_product"})
    assert mha.qk_norm is None and mha.attention.sink_logits is None
    assert not any("qk_norm" in k or "sink" in k for k in mha.state_dict())


def test_model_with_every_knob_trains_and_reloads(tmp_path):
    cfg = dict(name="decoder_lm", dim_model=32, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=40,
               max_seq_len=16, embedding=dict(name="rotary", fraction=0.5, scaling="yarn", factor=2.0),
               attention=dict(name="local", window_size=6, qk_norm="layer", softcap=20.0, sinks=True))
    model = blockzoo.build_model(cfg)
    keys = set(model.state_dict())
    assert {"blocks.0.self_attn.attention.sink_logits", "blocks.1.self_attn.qk_norm.k_weight"} <= keys
    with torch.no_grad():
        for block in model.blocks:
            block.self_attn.attention.sink_logits.normal_()
    tokens = torch.randint(0, 40, (2, 16))
    assert_trains_and_reloads(model, {"tokens": tokens, "targets": tokens}, (tokens,), tmp_path)


def test_describe_shows_the_knobs():
    text = blockzoo.describe("attention", "local")
    assert "softcap" in text and "sinks" in text and "qk_norm" in text
    assert "softcap=True" in text
    assert "softcap=False" in blockzoo.describe("attention", "favor")


def test_softcap_sinks_on_the_command_line_compose():
    cfg = blockzoo.compose(overrides=["attention=scaled_dot_product", "attention.softcap=30", "attention.sinks=true",
                                      "attention.qk_norm=rms"])
    assert cfg.attention.softcap == 30 and cfg.attention.sinks and cfg.attention.qk_norm == "rms"
    bad = blockzoo.compose(overrides=["attention=favor", "attention.sinks=true"])  # refused when built:
    with pytest.raises(ConfigError, match=r"model\.attention\.sinks=True: attention 'favor' has no softmax"):
        blockzoo.build_model({**config_to_dict(bad.model), "vocab_size": 32,
                              "attention": config_to_dict(bad.attention)})
