"""Property tests: random shapes (empty dims, odd sizes), NaN / inf sprinkled and fully masked rows, every op and
every attention path (forced) against PyTorch.

The one convention where blockzoo differs from PyTorch: a row with nothing kept (fully masked, or all -inf)
gives zeros, where PyTorch gives NaN; the references below apply it explicitly. NaN is sprinkled into attention
queries only: a NaN key or value that a row does not keep reaches that row through PyTorch's dense arithmetic
(NaN + -inf, 0 * NaN) but is never read by the sparse paths.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import blockzoo
from blockzoo.ops import BlockzooFallbackWarning, SparseLayout, masked_attention, sparse_softmax
from blockzoo.ops.attention import analysis

EXAMPLES = int(os.environ.get("BLOCKZOO_PROPERTY_EXAMPLES", "20"))  # CI's count; raise it for a longer local search
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = {torch.float64: dict(rtol=1e-7, atol=1e-9), torch.float32: dict(rtol=2e-4, atol=2e-5)}
SPECIALS = (float("nan"), float("inf"), float("-inf"))


@pytest.fixture(autouse=True)
def _quiet_and_fresh():
    analysis.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlockzooFallbackWarning)
        yield
    analysis.clear_cache()


def _forced(backend: str) -> contextlib.AbstractContextManager:
    return blockzoo.ops.force("triton") if backend == "triton" else contextlib.nullcontext()


def _dtype(backend: str) -> torch.dtype:
    """The Triton kernels compute in float32 (forcing them on float64 raises); the others run float64."""
    return torch.float32 if backend == "triton" else torch.float64


def _sprinkle(x: torch.Tensor, seed: int, count: int, values: tuple[float, ...] = SPECIALS) -> torch.Tensor:
    """``x`` with ``count`` elements set to values drawn from ``values`` (positions from ``seed``)."""
    if x.numel() == 0 or count == 0:
        return x
    gen = torch.Generator().manual_seed(seed)
    flat = x.clone().reshape(-1)
    idx = torch.randint(x.numel(), (count,), generator=gen)
    pick = torch.randint(len(values), (count,), generator=gen)
    flat[idx] = torch.tensor(values, dtype=x.dtype)[pick]
    return flat.reshape(x.shape)


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want.double(), equal_nan=True, **TOL[dtype])


shapes = st.lists(st.integers(0, 7), min_size=1, max_size=3).map(tuple)


# ------------------------------------------------------------------------------------------- softmax
def _softmax_ref(x: torch.Tensor, dim: int, keep: torch.Tensor | None, log: bool) -> torch.Tensor:
    """torch.(log_)softmax over the kept entries; rows with nothing kept (or all -inf) are zeros."""
    s = x.double() if keep is None else x.double().masked_fill(~keep, float("-inf"))
    empty = torch.isneginf(s) if s.dim() == 0 else torch.isneginf(s).all(dim, keepdim=True)
    out = torch.log_softmax(s, dim) if log else torch.softmax(s, dim)
    return torch.where(empty, torch.zeros_like(out), out)


@SETTINGS
@given(shape=st.one_of(st.just(()), shapes), dim_pick=st.integers(0, 2), log=st.booleans(),
       masked=st.booleans(), specials=st.integers(0, 3), seed=st.integers(0, 2**16),
       backend=st.sampled_from(["auto", "triton"]))
def test_softmax(shape, dim_pick, log, masked, specials, seed, backend):
    dtype = _dtype(backend)
    gen = torch.Generator().manual_seed(seed)
    x = _sprinkle(torch.randn(shape, generator=gen, dtype=dtype) * 3, seed, specials)
    dim = dim_pick % max(1, len(shape))
    keep = None
    if masked:  # some rows fully masked; broadcast over the first dim when there are several
        keep = torch.rand(shape[1:] if len(shape) > 1 else shape, generator=gen) < 0.6
    x.requires_grad_()
    with _forced(backend):
        out = blockzoo.ops.softmax(x, dim, mask=keep, log=log)
    ref_keep = None if keep is None else keep.expand(shape)
    ref = _softmax_ref(x.detach(), dim, ref_keep, log)
    _close(out.detach(), ref, dtype)
    if specials == 0 and out.numel():
        xd = x.detach().double().requires_grad_()
        grad = torch.randn(shape, generator=gen, dtype=torch.float64)
        _close(torch.autograd.grad(out, x, grad.to(dtype))[0], torch.autograd.grad(
            _softmax_ref(xd, dim, ref_keep, log), xd, grad)[0], dtype)


@SETTINGS
@given(rows=st.integers(0, 5), n=st.integers(1, 9), log=st.booleans(), seed=st.integers(0, 2**16),
       backend=st.sampled_from(["auto", "triton"]))
def test_softmax_causal(rows, n, log, seed, backend):
    dtype = _dtype(backend)
    x = _sprinkle(torch.randn(2, rows, n, dtype=dtype), seed, 2)
    with _forced(backend):
        out = blockzoo.ops.softmax(x, mask=None, causal=True, log=log)
    keep = torch.ones(rows, n, dtype=torch.bool).tril()
    _close(out, _softmax_ref(x, -1, keep.expand(x.shape), log), dtype)


# ------------------------------------------------------------------------------------------ the norms
@SETTINGS
@given(lead=st.lists(st.integers(0, 4), max_size=2).map(tuple), norm=st.lists(st.integers(0, 5), min_size=1,
       max_size=2).map(tuple), affine=st.booleans(), specials=st.integers(0, 2), seed=st.integers(0, 2**16),
       backend=st.sampled_from(["auto", "triton"]))
def test_norms(lead, norm, affine, specials, seed, backend):
    dtype = _dtype(backend)
    gen = torch.Generator().manual_seed(seed)
    x = _sprinkle(torch.randn(lead + norm, generator=gen, dtype=dtype), seed, specials).requires_grad_()
    w = torch.randn(norm, generator=gen, dtype=dtype).requires_grad_() if affine else None
    b = torch.randn(norm, generator=gen, dtype=dtype).requires_grad_() if affine else None
    with _forced(backend):
        ln = blockzoo.ops.layer_norm(x, norm, w, b, 1e-5)
        rms = blockzoo.ops.rms_norm(x, norm, w, 1e-6)
    leaves = [t for t in (x, w, b) if t is not None]
    doubles = [t.detach().double().requires_grad_() for t in leaves]
    xd, wd, bd = doubles + [None] * (3 - len(doubles))
    ref_ln, ref_rms = F.layer_norm(xd, norm, wd, bd, 1e-5), F.rms_norm(xd, norm, wd, 1e-6)
    _close(ln.detach(), ref_ln.detach(), dtype)
    _close(rms.detach(), ref_rms.detach(), dtype)
    if specials == 0 and x.numel():
        g1, g2 = torch.randn_like(ref_ln), torch.randn_like(ref_rms)
        got = torch.autograd.grad((ln * g1.to(dtype)).sum() + (rms * g2.to(dtype)).sum(), leaves)
        want = torch.autograd.grad((ref_ln * g1).sum() + (ref_rms * g2).sum(), doubles)
        for a, e in zip(got, want):
            torch.testing.assert_close(a.double(), e, rtol=1e-3 if dtype == torch.float32 else 1e-7, atol=1e-4)


# ---------------------------------------------------------------------------------------- sparse ops
@SETTINGS
@given(groups=st.integers(1, 2), rows=st.integers(0, 6), cols=st.integers(0, 7), density=st.floats(0, 1),
       specials=st.integers(0, 4), seed=st.integers(0, 2**16), backend=st.sampled_from(["auto", "torch"]))
def test_sparse_softmax_matches_dense_softmax_over_kept_entries(groups, rows, cols, density, specials, seed,
                                                                backend):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(groups, rows, cols, generator=gen) < density
    layout = SparseLayout.from_mask(mask)
    dense = _sprinkle(torch.randn(groups, 3, rows, cols, generator=gen, dtype=torch.float64), seed, specials)
    r, c, valid = layout.entries()
    g = torch.arange(groups)[:, None].expand_as(r)
    values = dense[g, :, r, c].permute(0, 2, 1).masked_fill(~valid[:, None], 0)  # (G, 3, P)
    with blockzoo.ops.force(backend):
        out = sparse_softmax(values, layout)
    ref = _softmax_ref(dense, -1, mask[:, None].expand(dense.shape), False)
    want = ref[g, :, r, c].permute(0, 2, 1).masked_fill(~valid[:, None], 0)
    _close(out, want, torch.float64)


# ------------------------------------------------------------------------------------------ attention
def _attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   causal: bool, flash: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention in float64; rows with nothing kept are zeros (SDPA: NaN). ``flash``: the
    call the flash path makes, SDPA with no mask (on the CPU its fused kernel gives a NaN query row zeros, where
    SDPA's math path and every other blockzoo path give NaN)."""
    q, k, v = (t.double() for t in (q, k, v))
    if flash:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
    L, S = q.shape[-2], k.shape[-2]
    keep = torch.ones(L, S, dtype=torch.bool)
    if causal:
        keep = keep.tril()
    bias = torch.zeros(L, S, dtype=torch.float64)
    if mask is not None and mask.dtype == torch.bool:
        keep = keep & mask
    elif mask is not None:
        bias = bias + mask.double()
        keep = keep & ~torch.isneginf(mask)
    keep = keep.expand(*q.shape[:-1], S)
    empty = ~keep.any(-1, keepdim=True)
    bias = bias.masked_fill(~keep, float("-inf")).masked_fill(empty, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=q.shape[1] != k.shape[1])
    return out.masked_fill(empty, 0.0)


PATHS = [  # (forced path, backend): csr with the auto backend runs the compiled CPU sparse ops
    (None, "auto"), ("dense", "auto"), ("csr", "auto"), ("csr", "triton"), ("block_sparse", "triton"),
    ("flash", "auto")]


@st.composite
def attention_cases(draw):
    B, H_kv = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    H = H_kv * draw(st.integers(1, 2))
    L, S = draw(st.integers(0, 21)), draw(st.integers(0, 21))
    kind = draw(st.sampled_from(["none", "bool", "bool4", "neginf", "additive"]))
    return B, H, H_kv, L, S, kind, draw(st.booleans()), draw(st.integers(0, 3)), draw(st.integers(0, 2**16))


def _mask(kind: str, B: int, L: int, S: int, gen: torch.Generator) -> torch.Tensor | None:
    """A mask of the given kind with fully masked rows."""
    if kind == "none":
        return None
    keep = torch.rand(B if kind == "bool4" else 1, 1, L, S, generator=gen) < 0.4
    if L:
        keep[..., 0, :] = False  # a fully masked row
    if kind in ("bool", "bool4"):
        return keep if kind == "bool4" else keep[0, 0]
    add = torch.zeros(L, S, dtype=torch.float64).masked_fill(~keep[0, 0], float("-inf"))
    return add + torch.randn(L, S, generator=gen, dtype=torch.float64) if kind == "additive" else add


@SETTINGS
@given(case=attention_cases(), path=st.sampled_from(PATHS))
def test_attention_paths(case, path):
    B, H, H_kv, L, S, kind, causal, nans, seed = case
    forced, backend = path
    dtype = _dtype(backend)
    gen = torch.Generator().manual_seed(seed)
    q = _sprinkle(torch.randn(B, H, L, 16, generator=gen, dtype=torch.float64), seed, nans, (float("nan"),))
    k, v = (torch.randn(B, H_kv, S, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = _mask(kind, B, L, S, gen)
    inputs = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    m = mask.to(dtype) if mask is not None and mask.is_floating_point() else mask
    finite_bias = mask is not None and mask.is_floating_point() and bool(((mask != 0) & ~mask.isneginf()).any())
    refuses = L and S and ((forced == "flash" and mask is not None) or
                           (forced in ("csr", "block_sparse") and finite_bias))
    with _forced(backend):
        if refuses:  # a path that cannot apply the mask (or its finite values) raises, never drops it
            with pytest.raises(ValueError):
                masked_attention(*inputs, m, causal=causal, path=forced)
            return
        out = masked_attention(*inputs, m, causal=causal, path=forced)
    flash = mask is None and forced in (None, "flash") and S > 0  # S = 0: every row fully masked, zeros
    ref = _attention_ref(q, k, v, mask, causal, flash)
    _close(out.detach(), ref, dtype)
    if nans == 0 and out.numel():
        grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        refs = [t.detach().requires_grad_() for t in (q, k, v)]
        want = torch.autograd.grad(_attention_ref(*refs, mask, causal, flash), refs, grad)
        got = torch.autograd.grad(out, inputs, grad.to(dtype))
        for a, e in zip(got, want):
            torch.testing.assert_close(a.double(), e, rtol=1e-3 if dtype == torch.float32 else 1e-7, atol=1e-4)


@SETTINGS
@given(lead_q=st.lists(st.integers(1, 3), max_size=3).map(tuple), L=st.integers(0, 6), S=st.integers(0, 6),
       broadcast=st.booleans(), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_attention_takes_sdpa_shapes(lead_q, L, S, broadcast, masked, seed):
    """(..., L, E) inputs with any number of leading dims, broadcast between q and k/v, as SDPA takes them."""
    gen = torch.Generator().manual_seed(seed)
    lead_kv = tuple(1 if broadcast and i % 2 else d for i, d in enumerate(lead_q))
    q = torch.randn(*lead_q, L, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(*lead_kv, S, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = torch.rand(L, S, generator=gen) < 0.7 if masked else None
    if mask is not None and S:
        mask[:, 0] = True  # SDPA gives NaN for a fully masked row, blockzoo zeros: no row is fully masked here
    out = masked_attention(q, k, v, mask)
    _close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), torch.float64)


@SETTINGS
@given(n=st.integers(0, 6), d=st.integers(1, 6), specials=st.integers(0, 3), seed=st.integers(0, 2**16),
       act=st.sampled_from(["relu", "gelu", "silu"]))
def test_elementwise_ops_propagate_nan(n, d, specials, seed, act):
    """dropout_bias_act (eval) and linear_act are elementwise around PyTorch ops: NaN / inf pass as in PyTorch."""
    gen = torch.Generator().manual_seed(seed)
    x = _sprinkle(torch.randn(n, d, generator=gen, dtype=torch.float64), seed, specials)
    bias, w = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, d, generator=gen, dtype=torch.float64)
    ref_act = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[act]
    _close(blockzoo.ops.dropout_bias_act(x, bias, 0.5, act, training=False), ref_act(x + bias), torch.float64)
    _close(blockzoo.ops.linear_act(x, w, bias, act), ref_act(F.linear(x, w, bias)), torch.float64)
