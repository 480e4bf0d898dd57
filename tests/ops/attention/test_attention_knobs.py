"""``masked_attention`` with ``softcap`` and ``sink_logits`` against a float64 reference written here
(explicit scores, tanh cap, mask, a sink column in the softmax), forward and backward, on every mask
kind the dispatch takes; the paths that cannot apply the knobs are never chosen and refuse when forced."""
import math
import warnings

import pytest
import torch

from blockzoo import ops
from blockzoo.ops import backend, torch_ref
from blockzoo.ops.attention import knobs
from tests.helpers import TOL, rel_err


def reference(q, k, v, keep=None, bias=None, causal=False, softcap=None, sinks=None, scale=None):
    """Float64 oracle, independent of torch_ref: keep (bool) / bias (additive) broadcast to (B, H, L, S)."""
    q, k, v = q.double(), k.double(), v.double()
    H, S = q.shape[1], k.shape[2]
    k = k.repeat_interleave(H // k.shape[1], 1)
    v = v.repeat_interleave(H // v.shape[1], 1)
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.double()
    allowed = torch.ones(s.shape, dtype=torch.bool)
    if keep is not None:
        allowed = allowed & keep
    if causal:
        allowed = allowed & torch.ones(q.shape[2], S, dtype=torch.bool).tril()
    s = s.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.double()[None, :, None, None].expand(*s.shape[:-1], 1)], -1)
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = (s - m).exp()
    p = e / e.sum(-1, keepdim=True).clamp_min(1e-300)
    if sinks is not None:
        p = p[..., :-1]
    return p @ v


def make(B, H, H_kv, L, S, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (2 * torch.randn(B, H, L, D, generator=g)).to(dtype).requires_grad_()
    k = (2 * torch.randn(B, H_kv, S, D, generator=g)).to(dtype).requires_grad_()
    v = torch.randn(B, H_kv, S, D, generator=g).to(dtype).requires_grad_()
    sinks = torch.randn(H, generator=g).to(dtype).requires_grad_()
    return q, k, v, sinks


def check_grads(out, ref, tensors, tol):
    grad = torch.randn(ref.shape, dtype=torch.float64)
    got = torch.autograd.grad(out, tensors, grad.to(out.dtype))
    want = torch.autograd.grad(ref, tensors, grad)
    assert rel_err(out.detach(), ref.detach()) < tol
    for g, w in zip(got, want):
        assert rel_err(g, w) < 4 * tol


CASES = ["none", "causal", "bool", "additive", "padding", "band", "gqa", "empty_row"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("softcap,use_sinks", [(3.0, False), (None, True), (2.5, True)])
def test_knobs_match_float64_reference_forward_and_backward(case, softcap, use_sinks):
    B, H, L, S, D = 2, 4, 9, 11, 8
    H_kv = 2 if case == "gqa" else H
    q, k, v, sinks = make(B, H, H_kv, L, S if case not in ("band", "causal") else L, D)
    S = k.shape[2]
    sinks = sinks if use_sinks else None
    g = torch.Generator().manual_seed(1)
    mask, keep, bias, causal, kpm = None, None, None, False, None
    if case == "causal":
        causal = True
    elif case in ("bool", "empty_row"):
        keep = torch.rand(B, 1, L, S, generator=g) > 0.4
        if case == "empty_row":
            keep[1, 0, 3] = False
        mask = keep
    elif case == "additive":
        bias = torch.randn(1, H, L, S, generator=g, dtype=torch.float64)
        bias[0, 1, 2, ::2] = float("-inf")
        mask = bias
    elif case == "padding":
        kpm = torch.zeros(B, S, dtype=torch.bool)
        kpm[0, -3:] = True
        keep = ~kpm[:, None, None, :]
    elif case == "band":
        mask = ops.band_mask((-2, 2), L, S, causal=True)
        i, j = torch.arange(L)[:, None], torch.arange(S)[None, :]
        keep = ((j - i) >= -2) & ((j - i) <= 2) & (j <= i)
    out = ops.masked_attention(q, k, v, mask=mask, causal=causal, key_padding_mask=kpm, softcap=softcap,
                               sink_logits=sinks)
    assert backend.last_path("masked_attention") == "dense"
    ref = reference(q, k, v, keep, bias, causal, softcap, sinks)
    tensors = (q, k, v) + ((sinks,) if sinks is not None else ())
    check_grads(out, ref, tensors, 1e-10)
    if case == "empty_row":
        assert torch.equal(out[1, :, 3], torch.zeros_like(out[1, :, 3]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_knobs_low_precision_within_tolerance(dtype):
    q, k, v, sinks = make(1, 2, 2, 13, 13, 16)
    q32, k32, v32, s32 = (t.detach().to(dtype).requires_grad_() for t in (q, k, v, sinks))
    out = ops.masked_attention(q32, k32, v32, causal=True, softcap=4.0, sink_logits=s32)
    assert out.dtype == dtype
    ref = reference(q, k, v, causal=True, softcap=4.0, sinks=sinks)
    grad = torch.randn(ref.shape, dtype=torch.float64)
    got = torch.autograd.grad(out, (q32, k32, v32, s32), grad.to(dtype))
    want = torch.autograd.grad(ref, (q, k, v, sinks), grad)
    assert rel_err(out.detach(), ref.detach()) < 4 * TOL[dtype]
    for a, b in zip(got, want):
        assert rel_err(a, b) < 16 * TOL[dtype]


def test_softcap_changes_the_output_and_a_large_cap_is_none():
    q, k, v, _ = make(1, 2, 2, 6, 6, 8)
    plain = ops.masked_attention(q, k, v)
    plain = plain.detach()
    assert rel_err(ops.masked_attention(q, k, v, softcap=1.0).detach(), plain) > 1e-2
    assert rel_err(ops.masked_attention(q, k, v, softcap=1e6).detach(), plain) < 1e-9


def test_sink_shrinks_the_output_by_the_sink_probability():
    q, k, v, _ = make(1, 2, 2, 5, 7, 8)
    plain = ops.masked_attention(q, k, v).detach()
    zero = torch.full((2,), -1e4, dtype=torch.float64)
    assert rel_err(ops.masked_attention(q, k, v, sink_logits=zero).detach(), plain) < 1e-12  # e^-1e4: no sink
    big = torch.full((2,), 1e4, dtype=torch.float64)
    assert ops.masked_attention(q, k, v, sink_logits=big).abs().max() < 1e-12  # all mass on the sink


def test_torch_ref_attention_takes_the_knobs():
    q, k, v, sinks = make(2, 4, 2, 7, 5, 8)
    ref = reference(q, k, v, causal=True, softcap=2.0, sinks=sinks)
    out = torch_ref.attention(q, k, v, None, True, None, softcap=2.0, sink_logits=sinks)
    assert rel_err(out, ref) < 1e-12
    assert torch_ref.attention(q, k[:, :, :0], v[:, :, :0], sink_logits=sinks).abs().max() == 0


@pytest.mark.parametrize("path", ["flash", "block_sparse", "csr"])
def test_forcing_a_path_that_cannot_apply_a_knob_raises(path):
    q, k, v, sinks = make(1, 2, 2, 6, 6, 8)
    keep = torch.rand(6, 6) > 0.3
    with pytest.raises(ValueError, match=f"path='{path}' cannot apply softcap"):
        ops.masked_attention(q, k, v, mask=keep, softcap=3.0, path=path)
    with pytest.raises(ValueError, match="cannot apply sinks"):
        ops.masked_attention(q, k, v, mask=keep, sink_logits=sinks, path=path)
    with pytest.raises(ValueError, match="cannot apply softcap and sinks"):
        ops.explain(q, k, v, mask=keep, softcap=1.0, sink_logits=sinks, path=path)
    out = ops.masked_attention(q, k, v, mask=keep, softcap=3.0, path="dense")
    assert rel_err(out, reference(q, k, v, keep, softcap=3.0)) < 1e-12


def test_explain_names_the_dense_path_for_knobs():
    q, k, v, sinks = make(1, 2, 2, 6, 6, 8)
    text = ops.explain(q, k, v, causal=True, softcap=3.0, sink_logits=sinks)
    assert "path=dense" in text and "softcap and sinks" in text and "torch path" in text
    assert "path=flash" in ops.explain(q, k, v, causal=True)  # without knobs: flash as before


@pytest.mark.parametrize("bad,err,match", [
    (dict(softcap=0.0), ValueError, "softcap must be a finite number > 0"),
    (dict(softcap=-2.0), ValueError, "softcap must be a finite number > 0"),
    (dict(softcap=float("inf")), ValueError, "softcap must be a finite number > 0"),
    (dict(softcap="3"), TypeError, "softcap must be a number"),
    (dict(sink_logits=torch.zeros(3)), ValueError, r"sink_logits must have shape \(H,\) = \(2,\)"),
    (dict(sink_logits=torch.zeros(2, dtype=torch.long)), TypeError, "sink_logits must be floating point"),
    (dict(sink_logits=[0.0, 0.0]), TypeError, "sink_logits must be a tensor"),
])
def test_bad_knob_arguments_raise(bad, err, match):
    q, k, v, _ = make(1, 2, 2, 4, 4, 8)
    with pytest.raises(err, match=match):
        ops.masked_attention(q, k, v, **bad)


def test_knobs_with_sdpa_shapes_3d():
    q, k, v, sinks = make(1, 3, 3, 5, 6, 8)
    q3, k3, v3 = (t[0] for t in (q, k, v))
    out = ops.masked_attention(q3, k3, v3, softcap=2.0, sink_logits=sinks)
    assert out.shape == (3, 5, 8)
    assert rel_err(out, reference(q, k, v, softcap=2.0, sinks=sinks)[0]) < 1e-12


@pytest.mark.parametrize("case", ["none", "causal", "bool", "additive", "band"])
def test_flex_path_forward_matches_float64_on_the_cpu(case):
    """The flex_attention score_mod path (eager flex runs forward only on the CPU)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v, sinks = make(2, 4, 2, 9, 9, 8)
    g = torch.Generator().manual_seed(3)
    keep = bias = mask = None
    if case == "bool":
        keep = mask = torch.rand(2, 1, 9, 9, generator=g) > 0.4
        keep[0, 0, 4] = False
    elif case == "additive":
        bias = mask = torch.randn(1, 4, 9, 9, generator=g, dtype=torch.float64)
    band = (-3, 0) if case == "band" else None
    if band:
        d = torch.arange(9)[None, :] - torch.arange(9)[:, None]
        keep = (d >= -3) & (d <= 0)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is unfused
        out = knobs.flex_attention_knobs(*(t.detach() for t in (q, k, v)), mask, case == "causal", 1 / math.sqrt(8),
                                         2.0, sinks.detach(), compiled=False, band=band)
    ref = reference(q, k, v, keep, bias, case == "causal", 2.0, sinks)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-12
