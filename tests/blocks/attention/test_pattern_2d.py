"""pattern_2d attention: forward and backward against float64 attention under a brute-force 2-D pattern, with
the caller's mask, causal flag and key padding; its config checks (with paths) and a model built from compose()."""
import itertools
import math

import pytest
import torch
from helpers import assert_attention_matches, assert_trains_and_reloads

import blockzoo
from blockzoo.config import ConfigError
from blockzoo.ops import torch_ref

B, H, D = 2, 3, 8
F64 = torch.float64


def grid_pairs(height, width):
    for i, j in itertools.product(range(height * width), repeat=2):
        yield i, j, i // width, i % width, j // width, j % width


def reference_mask(pattern, height, width, fields):
    """The pattern as a float64 additive mask, from its definition on every token pair."""
    L = height * width
    out = torch.zeros(L, L, dtype=F64)
    for i, j, ri, ci, rj, cj in grid_pairs(height, width):
        dr, dc = abs(ri - rj), abs(ci - cj)
        if pattern == "gaussian_2d":
            out[i, j] = -(dr ** 2 + dc ** 2) / (2 * fields["sigma"] ** 2)
            continue
        if pattern == "swin":
            w, s = fields["window_size"], fields["shift"]
            win = [-1 if x < s else (x - s) // w for x in (ri, ci, rj, cj)]
            keep = win[0] == win[2] and win[1] == win[3]
        else:
            keep = {"axial_h": dr == 0, "axial_v": dc == 0,
                    "local_2d": (dr ** fields["p"] + dc ** fields["p"]) ** (1 / fields["p"]) < fields["distance"],
                    "dilated_2d": dr % fields["dilation"] == 0 and dc % fields["dilation"] == 0}[pattern]
        out[i, j] = 0.0 if keep else -math.inf
    return out


Pattern2DDefaults = dict(distance=2.0, p=2.0, sigma=1.0, window_size=4, shift=0, dilation=2)  # the config's
CASES = {
    "axial_h": {}, "axial_v": {}, "local_2d": dict(distance=1.8, p=1.0), "gaussian_2d": dict(sigma=0.8),
    "swin": dict(window_size=2, shift=1), "dilated_2d": dict(dilation=2),
}


def build(pattern, **fields):
    cfg = {**CASES[pattern], **fields}
    return blockzoo.build("attention", "pattern_2d", pattern=pattern, num_heads=H, head_dim=D, **cfg)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pattern", sorted(CASES))
def test_forward_backward_against_float64_reference(pattern, causal, mask_kind, grid):
    height, width = grid
    square = height == width
    att = build(pattern, **({} if square else dict(height=height, width=width)))
    L = height * width
    q, k, v = (torch.randn(B, H, L, D, dtype=F64, requires_grad=True) for _ in range(3))
    padding = torch.zeros(B, L, dtype=torch.bool)
    padding[1, L - 3:] = True
    total = reference_mask(pattern, height, width, {**Pattern2DDefaults, **CASES[pattern]})
    total = total + torch.zeros(B, 1, 1, L, dtype=F64).masked_fill(padding[:, None, None, :], -math.inf)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(B, 1, L, L) > 0.3
        mask[..., 0] = True
        total = total.masked_fill(~mask, -math.inf)
    elif mask_kind == "additive":
        mask = torch.randn(1, H, L, L, dtype=F64)
        total = total + mask
    out = att(q, k, v, mask=mask, causal=causal, key_padding_mask=padding)
    assert_attention_matches(out, q, k, v, total, causal)


@pytest.mark.parametrize("pattern", sorted(CASES))
def test_float32_inputs(pattern):
    att = build(pattern)
    q, k, v = (torch.randn(B, H, 16, D, requires_grad=True) for _ in range(3))
    ref = reference_mask(pattern, 4, 4, {**Pattern2DDefaults, **CASES[pattern]})
    assert_attention_matches(att(q, k, v, causal=True), q, k, v, ref, causal=True)


def test_grid_must_match_the_length():
    q = torch.randn(1, H, 15, D)
    with pytest.raises(ValueError, match="perfect square"):
        build("axial_h")(q, q, q)
    with pytest.raises(ValueError, match="3 x 4 grid"):
        build("axial_h", height=3, width=4)(q, q, q)
    with pytest.raises(ValueError, match="as many keys as queries"):
        build("axial_h")(torch.randn(1, H, 16, D), q, q)
    assert build("axial_h").requires_grid and not build("axial_h", height=3, width=5).requires_grid


@pytest.mark.parametrize("fields, message", [
    (dict(pattern="swim"), r"attention\.pattern='swim'.*did you mean 'swin'"),
    (dict(pattern="swin", window_size=2, shift=2), r"attention\.shift=2 must be < attention\.window_size=2"),
    (dict(pattern="local_2d", distance=0.0), r"attention\.distance=0\.0"),
    (dict(pattern="local_2d", p=-2.0), r"attention\.p=-2\.0"),
    (dict(pattern="gaussian_2d", sigma=0.0), r"attention\.sigma"),
    (dict(pattern="dilated_2d", dilation=0), r"attention\.dilation"),
    (dict(pattern="axial_v", height=4), r"attention\.height=4 and attention\.width=0"),
    (dict(pattern="axial_v", heigth=4), r"attention\.heigth.*did you mean 'height'"),
])
def test_config_errors_name_the_path(fields, message):
    with pytest.raises(ConfigError, match=message):
        blockzoo.build("attention", "pattern_2d", **fields)


def test_compose_override_path_is_named():
    with pytest.raises(ConfigError, match=r"attention\.pattern"):
        cfg = blockzoo.compose(["attention=pattern_2d", "attention.pattern=axial", "model=tiny_lm", "~task",
                                "model.vocab_size=32"])
        blockzoo.build_model(cfg)


@pytest.mark.parametrize("pattern", ["swin", "gaussian_2d"])
def test_builds_in_a_model_from_compose(pattern, tmp_path):
    cfg = blockzoo.compose(["attention=pattern_2d", f"attention.pattern={pattern}", "model=tiny_lm", "~task",
                            "model.vocab_size=32", "model.dim_model=32", "model.num_layers=2",
                            "model.max_seq_len=16", "attention.window_size=2", "attention.shift=1"])
    model = blockzoo.build_model(cfg)
    tokens = torch.randint(0, 32, (2, 16))
    assert_trains_and_reloads(model, {"tokens": tokens, "targets": tokens.roll(-1, 1)}, (tokens,), tmp_path / "m")


def test_pattern_is_the_ops_builder():
    att = build("local_2d", distance=2.5, p=2.0)
    torch.testing.assert_close(att.pattern(16, 16, torch.device("cpu"))[0],
                               blockzoo.ops.local_2d_keep(4, 4, 2.5, 2.0))
    q = torch.randn(1, H, 16, D, dtype=F64)
    torch.testing.assert_close(att(q, q, q), torch_ref.attention(q, q, q, blockzoo.ops.local_2d_keep(4, 4, 2.5)),
                               rtol=0, atol=1e-12)
