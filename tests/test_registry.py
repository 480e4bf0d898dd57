"""Registry: register, build, list, describe, and errors that name the problem."""
from dataclasses import dataclass

import pytest
import torch

import blockzoo
from blockzoo.registry import Registry


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match=r"unknown attention 'locl'; did you mean 'local'"):
        blockzoo.build("attention", "locl")


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown component kind 'atention'"):
        blockzoo.list_components("atention")


def test_list_with_pattern():
    assert "local" in blockzoo.list_components("attention", "*loc*")
    assert blockzoo.list_components("attention", "*loc*") == sorted(blockzoo.list_components("attention", "*loc*"))
    assert "scaled_dot_product" not in blockzoo.list_components("attention", "*loc*")


def test_build_with_overrides_and_describe():
    att = blockzoo.build("attention", "local", window_size=16, num_heads=2, head_dim=8)
    assert att.cfg.window_size == 16
    text = blockzoo.describe("attention", "local")
    assert "window_size: int = 32" in text and "LocalConfig" in text and "supports:" in text


def test_build_rejects_unknown_key_with_close_match():
    with pytest.raises(ValueError, match=r"attention\.window_sise: unknown key.*did you mean 'window_size'"):
        blockzoo.build("attention", "local", window_sise=3)


def test_build_rejects_wrong_type():
    with pytest.raises(ValueError, match=r"attention\.window_size"):
        blockzoo.build("attention", "local", window_size="wide")


def test_taken_name_needs_override():
    reg = Registry("attention", blockzoo.AttentionConfig)

    @dataclass
    class Cfg(blockzoo.AttentionConfig):
        pass

    @reg.register("x_test", Cfg)
    class A(blockzoo.Attention):
        pass

    with pytest.raises(ValueError, match="already registered"):
        @reg.register("x_test", Cfg)
        class B(blockzoo.Attention):
            pass

    @reg.register("x_test", Cfg, override=True)
    class C(blockzoo.Attention):
        pass

    assert reg.get("x_test").cls is C


def test_config_class_must_be_a_dataclass_of_the_right_base():
    reg = Registry("norm", blockzoo.NormConfig)
    with pytest.raises(TypeError, match="must be a dataclass"):
        reg.register("n", dict)
    with pytest.raises(TypeError, match="must subclass NormConfig"):
        reg.register("n", blockzoo.AttentionConfig)


def test_register_custom_attention_and_build_in_model():
    @dataclass
    class GatedConfig(blockzoo.AttentionConfig):
        gate_bias: float = 0.0

    @blockzoo.register_attention("gated_test", GatedConfig, override=True)
    class GatedAttention(blockzoo.Attention):
        """Sigmoid-gated softmax attention (test plugin)."""

        def forward(self, q, k, v, mask=None):
            return torch.sigmoid(torch.tensor(self.cfg.gate_bias)) * blockzoo.ops.masked_attention(q, k, v, mask)

    model = blockzoo.build_model({"name": "decoder_lm", "dim_model": 32, "num_layers": 1, "num_heads": 2,
                                  "vocab_size": 11, "max_seq_len": 8,
                                  "attention": {"name": "gated_test", "gate_bias": 0.5}})
    tokens = torch.randint(0, 11, (2, 8))
    assert model(tokens).shape == (2, 8, 11)
    # causal was folded into the mask for a mechanism whose forward takes only `mask`
    out1 = model(tokens)
    tokens2 = tokens.clone()
    tokens2[:, -1] = (tokens[:, -1] + 1) % 11
    assert torch.allclose(model(tokens2)[:, :-1], out1[:, :-1], atol=1e-6)
