"""Partial rotary and rotary scaling (linear, NTK-aware, YaRN) against float64 references of each formula,
written here element by element; the odd-fraction error; a model trained at one length runs at a longer one."""
import math

import pytest
import torch

import blockzoo
from blockzoo.blocks.embedding.rotary import Rotary
from blockzoo.blocks.embedding.rotary_scaling import inverse_frequencies
from blockzoo.config import ConfigError
from tests.helpers import rel_err


def theta_ref(r, base, scaling="none", factor=1.0, orig=0, beta_fast=32.0, beta_slow=1.0):
    """Element-by-element float64 frequencies of the rotated dims."""
    out = []
    for i in range(r // 2):
        if scaling == "ntk":
            b = base * factor ** (r / (r - 2))
            out.append(b ** (-2 * i / r))
            continue
        t = base ** (-2 * i / r)
        if scaling == "linear":
            t = t / factor
        elif scaling == "yarn":
            wavelength = 2 * math.pi / t
            turns = orig / wavelength
            g = min(1.0, max(0.0, (turns - beta_slow) / (beta_fast - beta_slow)))
            t = (1 - g) * (t / factor) + g * t
        out.append(t)
    return torch.tensor(out, dtype=torch.float64)


def rotate_ref(x, theta, positions, mscale=1.0):
    """Rotate pairs (i, i + r/2) of the first r = 2 * len(theta) dims of x (..., L, D) by positions * theta."""
    r = 2 * len(theta)
    out = x.clone()
    for i in range(len(theta)):
        ang = positions.double()[:, None] * theta[i]  # (L, 1)
        c, s = torch.cos(ang)[:, 0] * mscale, torch.sin(ang)[:, 0] * mscale
        a, b = x[..., i], x[..., i + r // 2]
        out[..., i] = a * c - b * s
        out[..., i + r // 2] = b * c + a * s
    return out


@pytest.mark.parametrize("scaling,factor", [("none", 1.0), ("linear", 4.0), ("ntk", 4.0), ("yarn", 4.0),
                                            ("yarn", 16.0)])
@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_frequencies_and_rotation_match_float64_formulas(scaling, factor, fraction):
    D, L, base, orig = 32, 20, 10000.0, 64
    r = int(D * fraction)
    want = theta_ref(r, base, scaling, factor, orig)
    got = inverse_frequencies(r, base, scaling, factor, orig, 32.0, 1.0)
    assert rel_err(got, want) < 1e-14
    rot = Rotary(D, base, fraction=fraction, scaling=scaling, factor=factor, original_max_seq_len=orig).double()
    rot.inv_freq = want.clone()  # the float32 buffer's rounding aside: the rotation itself in float64
    x = torch.randn(2, 3, L, D, dtype=torch.float64, requires_grad=True)
    mscale = 0.1 * math.log(factor) + 1 if scaling == "yarn" else 1.0
    out = rot(x)
    ref = rotate_ref(x, want, torch.arange(L), mscale)
    assert rel_err(out.detach(), ref.detach()) < 1e-12
    assert torch.equal(out[..., r:], x[..., r:])  # unrotated dims pass through
    g = torch.randn_like(ref)
    assert rel_err(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0]) < 1e-12


def test_yarn_keeps_fast_dims_and_interpolates_slow_ones():
    theta = inverse_frequencies(64, 10000.0)
    yarn = inverse_frequencies(64, 10000.0, "yarn", 8.0, 256, 32.0, 1.0)
    assert torch.allclose(yarn[0], theta[0])  # many turns over the trained length: untouched
    assert torch.allclose(yarn[-1], theta[-1] / 8)  # less than one turn: fully interpolated
    assert ((yarn <= theta + 1e-15) & (yarn >= theta / 8 - 1e-15)).all()


def test_yarn_mscale_is_configurable_and_positions_are_honoured():
    rot = Rotary(16, scaling="yarn", factor=4.0, original_max_seq_len=32, mscale=1.5).double()
    x = torch.randn(1, 2, 5, 16, dtype=torch.float64)
    pos = torch.tensor([[3, 4, 5, 6, 7]])
    ref = rotate_ref(x, rot.inv_freq.double(), pos[0], 1.5)
    assert rel_err(rot(x, pos), ref) < 1e-6  # float32 angles
    cos, sin = rot.cos_sin(pos, torch.float64)
    assert cos.shape == (1, 5, 16)


@pytest.mark.parametrize("fraction,match", [(0.375, "rotates 3 dims, an odd number"),
                                            (0.3, "expected a whole, positive, even number")])
def test_a_fraction_with_odd_or_partial_dims_is_an_error_with_the_config_path(fraction, match):
    cfg = dict(name="decoder_lm", dim_model=32, num_layers=1, num_heads=4, vocab_size=20, max_seq_len=8,
               embedding=dict(name="rotary", fraction=fraction))
    with pytest.raises(ValueError, match=rf"model\.embedding\.fraction={fraction} of head_dim=8 .*{match}"):
        blockzoo.build_model(cfg)


@pytest.mark.parametrize("bad,match", [
    (dict(scaling="yarm"), r"embedding\.scaling='yarm': expected one of none, linear, ntk, yarn.*yarn"),
    (dict(factor=0.5), r"embedding\.factor=0\.5: expected >= 1"),
    (dict(fraction=0.0), r"embedding\.fraction=0\.0: expected a fraction in \(0, 1\]"),
    (dict(mscale=-1.0), r"embedding\.mscale=-1\.0: expected None or > 0"),
])
def test_bad_rotary_settings_name_their_path(bad, match):
    with pytest.raises(ConfigError, match=match):
        blockzoo.build("embedding", {"name": "rotary", **bad}, vocab_size=10, dim_model=8, max_seq_len=8)


def test_yarn_betas_must_be_ordered():
    with pytest.raises(ValueError, match=r"embedding\.beta_fast=1\.0, embedding\.beta_slow=2\.0"):
        Rotary(16, scaling="yarn", factor=2.0, original_max_seq_len=16, beta_fast=1.0, beta_slow=2.0)


@pytest.mark.parametrize("scaling", ["linear", "ntk", "yarn"])
def test_a_model_trained_at_one_length_runs_at_a_longer_one(scaling):
    torch.manual_seed(0)
    base = dict(name="decoder_lm", dim_model=32, num_layers=1, num_heads=2, vocab_size=20, max_seq_len=16)
    short = blockzoo.build_model({**base, "embedding": {"name": "rotary"}})
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        short(torch.randint(0, 20, (1, 64)))
    model = blockzoo.build_model({**base, "embedding": {"name": "rotary", "scaling": scaling, "factor": 4.0}})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tokens = torch.randint(0, 20, (2, 16))
    for _ in range(2):
        opt.zero_grad()
        model.loss({"tokens": tokens, "targets": tokens}).backward()
        opt.step()
    long = torch.randint(0, 20, (1, 64))  # 4x the trained length
    logits = model(long)
    assert logits.shape == (1, 64, 20) and torch.isfinite(logits).all()
    with pytest.raises(TypeError, match="tokens must be int64"):
        model(long.float())


def test_scaling_none_keeps_todays_rotary():
    rot = Rotary(16)
    want = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    assert torch.allclose(rot.inv_freq, want) and rot.mscale == 1.0 and rot.rotated_dim == 16
