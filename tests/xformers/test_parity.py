"""blockzoo.from_xformers against the real xformers 0.0.20: same weights, same outputs (fp32, atol 1e-5).

xFormers' Python components run on the CPU without its C++ extension for non-causal, unmasked
attention (its causal and local masks need the extension's SparseCS), so these configs are non-causal.
"""
import copy

import pytest
import torch

import blockzoo
from blockzoo.xformers import random_features

pytestmark = pytest.mark.xformers
model_factory = pytest.importorskip("xformers.factory.model_factory",
                                    reason="xformers 0.0.20 is not installed (scripts/setup.sh --test installs it)")
VOCAB, L, D = 50, 16, 32


def encoder(style="pre", ff="MLP", attention=None, layers=2, **extra):
    return {"block_type": "encoder", "num_layers": layers, "dim_model": D, "residual_norm_style": style,
            "position_encoding_config": {"name": "vocab", "seq_len": L, "vocab_size": VOCAB},
            "multi_head_config": {"num_heads": 4, "residual_dropout": 0.0,
                                  "attention": attention or {"name": "scaled_dot_product", "dropout": 0.0}},
            "feedforward_config": {"name": ff, "dropout": 0.0, "activation": "gelu", "hidden_layer_multiplier": 2},
            **extra}


def decoder(style="pre", layers=2):
    sdp = {"name": "scaled_dot_product", "dropout": 0.0}
    return {"block_type": "decoder", "num_layers": layers, "dim_model": D, "residual_norm_style": style,
            "position_encoding_config": {"name": "vocab", "seq_len": L, "vocab_size": VOCAB},
            "multi_head_config_masked": {"num_heads": 4, "attention": dict(sdp)},
            "multi_head_config_cross": {"num_heads": 4, "attention": dict(sdp)},
            "feedforward_config": {"name": "MLP", "dropout": 0.0, "activation": "relu", "hidden_layer_multiplier": 4}}


CASES = {
    **{f"encoder-{s}-{n}layers": [encoder(s, layers=n)] for s in ("pre", "post", "deepnorm") for n in (1, 2)},
    "conv-feedforward": [encoder("pre", ff="Conv2DFeedforward")],
    "rotary": [encoder("post", multi_head_config={"num_heads": 2, "use_rotary_embeddings": True,
                                                  "attention": {"name": "scaled_dot_product", "dropout": 0.0}})],
    "reversible": [encoder("pre", reversible=True, layers=3)],
    "two-encoder-stacks": [encoder("pre"), {**encoder("pre", layers=1), "position_encoding_config": None}],
    **{f"encoder-decoder-{s}": [encoder(s), decoder(s)] for s in ("pre", "post", "deepnorm")},
    "linformer": [encoder("pre", attention={"name": "linformer", "dropout": 0.0, "seq_len": L, "k": 4})],
    "nystrom": [encoder("post", attention={"name": "nystrom", "dropout": 0.0, "num_landmarks": 4, "seq_len": L})],
    "nystrom-conv": [encoder("pre", attention={"name": "nystrom", "dropout": 0.0, "num_landmarks": 4, "seq_len": L,
                                               "conv_kernel_size": 3})],
    # no input projection (fourier_mix), no multi-head wrapper at all (pooling, visual: L = 16 is a 4x4 grid)
    "fourier_mix": [encoder("pre", attention={"name": "fourier_mix", "dropout": 0.0})],
    "pooling": [encoder("post", attention={"name": "pooling", "pool_size": 3, "dropout": 0.1})],
    "visual": [encoder("pre", attention={"name": "visual", "dropout": 0.0})],
    # random features copied from the xFormers model (SMReg, the feature map every config-built favor ran)
    "favor": [encoder("pre", attention={"name": "favor", "dropout": 0.0, "dim_features": 16})],
    "favor-head-width-features": [encoder("post", attention={"name": "favor", "dropout": 0.0, "dim_head": 8})],
    # compositional owned its projections (shared q/k/v by default) and skipped the multi-head wrapper
    "compositional": [encoder("pre", attention={"name": "compositional", "dropout": 0.0, "num_rules": 2})],
    "compositional-separate-nonlinear": [encoder("post", attention={
        "name": "compositional", "dropout": 0.0, "num_rules": 4, "use_separate_proj_weight": True,
        "nonlinear": True, "dim_selection": 6, "bias": False})],
    "compositional-qk-rule": [encoder("pre", attention={"name": "compositional", "dropout": 0.0, "qk_rule": True,
                                                        "dim_attn": 16, "dim_value": 16,
                                                        "use_separate_proj_weight": True})],
    "lambda": [encoder("pre", attention={"name": "lambda", "dropout": 0.0, "seq_len": L, "dim_head": 8})],
    # global tokens (an N x 1 mask, as xFormers asserted); 4 of 16 keeps the pattern's density above xFormers'
    # 0.3 threshold, so it stays a dense additive mask (sparser ones become a SparseCS: C++ extension only)
    "global": [encoder("post", attention={"name": "global", "dropout": 0.0,
                                          "attention_query_mask": torch.arange(L)[:, None] % 4 == 1})],
    "smelu": [{**encoder("post"), "feedforward_config": {"name": "MLP", "dropout": 0.0, "activation": "smelu",
                                                         "hidden_layer_multiplier": 2}}],
    "simplicial": [encoder("pre"), encoder("pre", layers=1, position_encoding_config=None,
                                            simplicial_embeddings={"L": 4, "temperature": 0.5})],
    "embedding-projector": [encoder("post", position_encoding_config={"name": "vocab", "seq_len": L,
                                                                      "vocab_size": VOCAB, "dim_model": 24})],
    "dim_key": [encoder("pre", multi_head_config={"num_heads": 4, "dim_key": 16, "use_rotary_embeddings": True,
                                                  "attention": {"name": "scaled_dot_product", "dropout": 0.0}})],
    "local": [encoder("pre", attention={"name": "local", "dropout": 0.0, "window_size": 7})],
    # every token a landmark: xFormers ran plain attention
    "orthoformer-all-landmarks": [encoder("pre", attention={"name": "orthoformer", "dropout": 0.0,
                                                            "num_landmarks": L, "seq_len": L})],
}


@pytest.fixture(autouse=True)
def _dense_masks_without_the_extension(monkeypatch):
    """xFormers 0.0.20's core._matmul_with_mask tests ``isinstance(mask, SparseCS)`` for every additive mask, but
    imports SparseCS only with its C++ extension: without it, any masked mechanism (global, local) fails with
    NameError. A stand-in class nothing is an instance of lets its own dense PyTorch path run."""
    core = pytest.importorskip("xformers.components.attention.core")
    if not hasattr(core, "SparseCS"):
        monkeypatch.setattr(core, "SparseCS", type("SparseCS", (), {}), raising=False)


def _pair(config, tie=False):
    torch.manual_seed(0)
    stacks = model_factory.xFormerConfig(copy.deepcopy(config)).stack_configs
    reference = model_factory.xFormer(stacks, tie_embedding_weights=tie).eval()
    with torch.no_grad():  # favor draws its random features at its first call
        reference(torch.randint(0, VOCAB, (1, L)))
    weights = {**reference.state_dict(), **random_features(reference)}
    ours = blockzoo.from_xformers({"stack_configs": copy.deepcopy(config), "tie_embedding_weights": tie},
                                  weights).eval()
    return reference, ours


# xFormers' lambda draws its relative position table from N(0, 1): outputs reach ~10 and each model's fp32
# rounding is ~1e-5 from float64 (test_lambda_in_float64 checks the maths exactly).
ATOL = {"lambda": 5e-5}


@pytest.mark.parametrize("case", list(CASES))
def test_same_outputs_as_xformers(case):
    reference, ours = _pair(CASES[case])
    tokens = torch.randint(0, VOCAB, (3, L))
    with torch.no_grad():
        expected, got = reference(tokens), ours(tokens)
    assert got.shape == expected.shape == (3, L, D)
    torch.testing.assert_close(got, expected, atol=ATOL.get(case, 1e-5), rtol=1e-5)


def test_lambda_in_float64():
    reference, ours = _pair(CASES["lambda"])
    tokens = torch.randint(0, VOCAB, (3, L))
    with torch.no_grad():
        torch.testing.assert_close(ours.double()(tokens), reference.double()(tokens), atol=1e-10, rtol=1e-10)


def test_tied_embeddings_and_separate_target():
    reference, ours = _pair([encoder("pre"), decoder("pre")], tie=True)
    src, tgt = torch.randint(0, VOCAB, (2, L)), torch.randint(0, VOCAB, (2, L))
    with torch.no_grad():
        torch.testing.assert_close(ours(src, tgt), reference(src, tgt), atol=1e-5, rtol=1e-5)
    assert ours.enc_position is ours.dec_position


def test_a_changed_weight_changes_the_output():
    """The comparison can fail: perturb one copied weight and the outputs part."""
    reference, ours = _pair([encoder("post")])
    tokens = torch.randint(0, VOCAB, (2, L))
    with torch.no_grad():
        ours.encoders[0].self_attn.q_proj.weight.add_(torch.randn_like(ours.encoders[0].self_attn.q_proj.weight))
        assert (ours(tokens) - reference(tokens)).abs().max() > 1e-4  # ten times the tolerance


def test_favor_without_its_features_differs():
    """Leaving out random_features keeps blockzoo's own draw: the outputs part (the copy is what matches)."""
    config = CASES["favor"]
    reference, ours = _pair(config)
    tokens = torch.randint(0, VOCAB, (2, L))
    fresh = blockzoo.from_xformers({"stack_configs": copy.deepcopy(config)}, reference.state_dict()).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), reference(tokens), atol=1e-5, rtol=1e-5)
        assert (fresh(tokens) - reference(tokens)).abs().max() > 1e-4


@pytest.mark.parametrize("case", ["encoder-pre-2layers", "encoder-post-1layers", "reversible", "encoder-decoder-pre",
                                  "encoder-decoder-deepnorm", "pooling", "compositional"])
def test_input_masks(case):
    """encoder_input_mask / decoder_input_mask scale the keys' and values' inputs, as in xFormers."""
    reference, ours = _pair(CASES[case])
    tokens = torch.randint(0, VOCAB, (3, L))
    enc_mask, dec_mask = (torch.rand(3, L) > 0.3).float(), torch.rand(3, L)
    with torch.no_grad():
        expected = reference(tokens, encoder_input_mask=enc_mask, decoder_input_mask=dec_mask)
        got = ours(tokens, encoder_input_mask=enc_mask, decoder_input_mask=dec_mask)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        if case != "pooling":  # the mask matters (pooling, as in xFormers, reads the queries only)
            assert (got - ours(tokens)).abs().max() > 1e-3


@pytest.mark.parametrize("style", ["pre", "post"])
def test_residual_dropout_in_training(style):
    """residual_dropout drops the attention output only (not the feedforward's), drawing the same masks."""
    config = [encoder(style, multi_head_config={"num_heads": 4, "residual_dropout": 0.3,
                                                "attention": {"name": "scaled_dot_product", "dropout": 0.0}})]
    reference, ours = _pair(config)
    reference.train(), ours.train()
    tokens = torch.randint(0, VOCAB, (3, L))
    outs = []
    for model in (reference, ours):
        torch.manual_seed(7)
        with torch.no_grad():
            outs.append(model(tokens))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert (ours(tokens) - outs[1]).abs().max() > 1e-3  # dropout is on
