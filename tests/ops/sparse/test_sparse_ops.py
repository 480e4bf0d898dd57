"""sddmm, sparse_softmax, spmm and sparse attention: against dense float64 references, opcheck, gradcheck,
the PyTorch fallback, input checks and torch.compile. Runs on CUDA too when a GPU is present."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import DEVICES, TOL, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sparse_layout import dense_values, make_mask, masks

import blockzoo.ops
from blockzoo.ops import backend
from blockzoo.ops.sparse import SparseLayout, fallback, sddmm, sparse_softmax, spmm
from blockzoo.ops.sparse.ops import EXT_AVAILABLE

needs_ext = pytest.mark.skipif(not EXT_AVAILABLE, reason="compares against or calls blockzoo._C, absent here "
                                                          "(the fallback is checked by the other tests)")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
OPS = torch.ops.blockzoo


@st.composite
def problems(draw, max_size: int = 13):
    """(mask, batch dims, K), seeding torch's RNG for the example's inputs: shared layouts with 0-2 batch
    dims, per-batch ones with 1-2; odd K and K filling whole 16-byte vectors."""
    mask = draw(masks(max_size=max_size))
    if mask.dim() == 3:
        batch = (mask.shape[0],) + tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    else:
        batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return mask, batch, draw(st.sampled_from([1, 3, 8, 16, 37, 64, 136]))


def randn(*shape: int, dtype: torch.dtype, device: str, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def keep(mask: torch.Tensor, batch: tuple[int, ...]) -> torch.Tensor:
    """The mask broadcast against (batch..., M, N)."""
    if mask.dim() == 3:
        return mask.reshape(mask.shape[0], *([1] * (len(batch) - 1)), *mask.shape[1:])
    return mask


def as_dense(values: torch.Tensor, layout: SparseLayout, batch: tuple[int, ...]) -> torch.Tensor:
    return dense_values(values.cpu(), layout.to("cpu")).reshape(*batch, *layout.shape[-2:])


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)


def attention(q, k, v, layout, scale):
    return spmm(sparse_softmax(sddmm(q, k, layout, scale), layout), layout, v)


def assert_padding_zero(values: torch.Tensor, layout: SparseLayout) -> None:
    _, _, valid = layout.entries()
    G = layout.num_patterns
    v = values.reshape(G, math.prod(values.shape[:-1]) // G, values.shape[-1])
    assert not v.masked_fill(valid[:, None, :], 0).any()


def strided(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous copy of ``t``: every other element of a buffer twice as wide."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


def transposed(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous copy of ``t`` laid out with its last two dims swapped."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


# ------------------------------------------------------------------------------ dense references
@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(problem=problems(), dtype=st.sampled_from(DTYPES))
def test_sddmm_matches_dense(device, problem, dtype):
    mask, batch, K = problem
    layout = SparseLayout.from_mask(mask).to(device)
    M, N = mask.shape[-2:]
    a, b = randn(*batch, M, K, dtype=dtype, device=device), randn(*batch, N, K, dtype=dtype, device=device)
    out = sddmm(a, b, layout, scale=0.5)
    assert out.shape == (*batch, layout.max_nnz) and out.dtype == dtype
    ref = (a.double() @ b.double().transpose(-1, -2) * 0.5).cpu() * keep(mask, batch)
    assert rel_err(as_dense(out, layout, batch), ref) <= TOL[dtype]
    assert_padding_zero(out, layout)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(problem=problems(), dtype=st.sampled_from(DTYPES))
def test_sparse_softmax_matches_dense(device, problem, dtype):
    mask, batch, _ = problem
    layout = SparseLayout.from_mask(mask).to(device)
    values = randn(*batch, layout.max_nnz, dtype=dtype, device=device, scale=3.0)
    out = sparse_softmax(values, layout)
    assert out.shape == values.shape and torch.isfinite(out).all()
    full = as_dense(values, layout, batch)
    ref = masked_softmax(full, keep(mask, batch).expand(full.shape))
    assert rel_err(as_dense(out, layout, batch), ref) <= TOL[dtype]
    assert_padding_zero(out, layout)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(problem=problems(), dtype=st.sampled_from(DTYPES))
def test_spmm_matches_dense(device, problem, dtype):
    mask, batch, K = problem
    layout = SparseLayout.from_mask(mask).to(device)
    values = randn(*batch, layout.max_nnz, dtype=dtype, device=device)
    b = randn(*batch, mask.shape[-1], K, dtype=dtype, device=device)
    out = spmm(values, layout, b)
    assert out.shape == (*batch, mask.shape[-2], K) and out.dtype == dtype
    ref = as_dense(values, layout, batch) @ b.double().cpu()
    assert rel_err(out.cpu(), ref) <= TOL[dtype]


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(problem=problems(max_size=11), dtype=st.sampled_from(DTYPES))
def test_sparse_attention_forward_and_backward_match_dense(device, problem, dtype):
    mask, batch, K = problem
    layout = SparseLayout.from_mask(mask).to(device)
    M, N = mask.shape[-2:]
    q, k, v = (randn(*batch, n, K, dtype=dtype, device=device).requires_grad_() for n in (M, N, N))
    grad = randn(*batch, M, K, dtype=dtype, device=device)
    scale = K ** -0.5
    out = attention(q, k, v, layout, scale)
    out.backward(grad)
    results = []  # (output, grads) of dense PyTorch in float64 and in the test's dtype
    for ref_dtype in {torch.float64, dtype}:
        xs = [t.detach().cpu().to(ref_dtype).requires_grad_() for t in (q, k, v)]
        ref = masked_softmax(xs[0] @ xs[1].transpose(-1, -2) * scale, keep(mask, batch)) @ xs[2]
        ref.backward(grad.cpu().to(ref_dtype))
        results.append((ref.detach(), *(x.grad for x in xs)))
    ref64 = results[0] if results[0][0].dtype == torch.float64 else results[1]
    low = results[0] if results[0][0].dtype == dtype else results[1]
    ours = (out.detach(), q.grad, k.grad, v.grad)
    for i, (o, r, l) in enumerate(zip(ours, ref64, low)):
        # the intermediates (scores, probabilities, their gradients) are rounded to the dtype, and the
        # softmax backward cancels: no worse than twice PyTorch's own dense error in that dtype
        if dtype == torch.float64:
            tol = 1e-10 if i == 0 else 1e-9
        else:
            tol = max(TOL[dtype] * (1 if i == 0 else 4), 2 * rel_err(l, r))
        assert rel_err(o.cpu(), r) <= tol


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` starting one element into its buffer (not 16-byte aligned)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_batch, K, dtype, align", [
    (False, 64, torch.float32, True), (True, 64, torch.bfloat16, True), (False, 136, torch.float16, True),
    (True, 136, torch.float32, True), (False, 5, torch.float32, True), (True, 64, torch.float16, False),
])
def test_long_rows_and_many_rows_match_dense(device, per_batch, K, dtype, align):
    """Rows longer than a warp, more rows than a block, K past one vector chunk, unaligned operands."""
    shape = (2, 70, 300) if per_batch else (70, 300)
    mask = make_mask("full_row", shape, 0.6, seed=K)
    layout = SparseLayout.from_mask(mask).to(device)
    batch = (2, 3)
    fix = (lambda t: t) if align else misaligned
    q, k, v = (fix(randn(*batch, n, K, dtype=dtype, device=device)) for n in (70, 300, 300))
    s = sddmm(q, k, layout, 0.125)
    ref_s = (q.double() @ k.double().transpose(-1, -2) * 0.125).cpu() * keep(mask, batch)
    assert rel_err(as_dense(s, layout, batch), ref_s) <= TOL[dtype]
    p = sparse_softmax(s, layout)
    ref_p = masked_softmax(as_dense(s, layout, batch), keep(mask, batch))
    assert rel_err(as_dense(p, layout, batch), ref_p) <= TOL[dtype]
    out = spmm(fix(p), layout, v)
    assert rel_err(out.cpu(), as_dense(p, layout, batch) @ v.double().cpu()) <= TOL[dtype]


# ------------------------------------------------------------------------------ opcheck / gradcheck
def small_case(per_batch: bool, device: str, dtype: torch.dtype = torch.float64, seed: int = 1):
    shape = (2, 5, 6) if per_batch else (5, 6)
    mask = make_mask("empty_rows", shape, 0.7, seed) | make_mask("single", shape, 0.0, seed + 1)
    layout = SparseLayout.from_mask(mask).to(device)
    batch = (2, 2)
    a = randn(*batch, 5, 3, dtype=dtype, device=device).requires_grad_()
    b = randn(*batch, 6, 3, dtype=dtype, device=device).requires_grad_()
    values = randn(*batch, layout.max_nnz, dtype=dtype, device=device).requires_grad_()
    return layout, a, b, values


def layout_args(layout: SparseLayout):
    return layout.row_offsets, layout.col_indices, layout.row_order


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_batch", [False, True])
def test_opcheck(device, per_batch):
    layout, a, b, values = small_case(per_batch, device, torch.float32)
    ro, ci, order = layout_args(layout)
    t = layout.transpose()
    probs = sparse_softmax(values.detach(), layout)
    cases = [
        (OPS.csr_sddmm.default, (ro, ci, order, a, b, 0.7, *t)),
        (OPS.csr_sddmm.default, (ro, ci, order, a, b, 1.0)),
        (OPS.csr_spmm.default, (ro, ci, order, values, b, None, *t)),
        (OPS.csr_spmm.default, (ro, ci, order, values, b)),
        (OPS.csr_spmm.default, (t.row_offsets, t.col_indices, t.row_order, values, a, t.perm)),
        (OPS.csr_softmax.default, (ro, order, values)),
        (OPS.csr_softmax_backward.default, (ro, order, probs, torch.randn_like(probs))),
        (OPS.csr_transpose.default, (ro, ci, 6)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("per_batch", [False, True])
def test_gradcheck(per_batch):
    layout, a, b, values = small_case(per_batch, "cpu")
    assert torch.autograd.gradcheck(lambda a, b: sddmm(a, b, layout, 0.3), (a, b))
    assert torch.autograd.gradcheck(lambda v: sparse_softmax(v, layout), (values,))
    assert torch.autograd.gradcheck(lambda v, b: spmm(v, layout, b), (values, b))
    v = b.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, layout, 0.5), (a, b, v))


@needs_ext
@pytest.mark.parametrize("per_batch", [False, True])
def test_gradcheck_transposed_spmm(per_batch):
    """spmm over the cached transpose, its values read through the permutation (what dB uses)."""
    layout, a, _, values = small_case(per_batch, "cpu")
    t = layout.transpose()
    transposed = (t.row_offsets, t.col_indices, t.row_order)
    assert torch.autograd.gradcheck(lambda v, a: OPS.csr_spmm(*transposed, v, a, t.perm), (values, a))


@needs_ext
def test_gradgradcheck_without_cached_transpose():
    layout, a, b, values = small_case(False, "cpu")
    ro, ci, order = layout_args(layout)
    assert torch.autograd.gradgradcheck(lambda v, b: OPS.csr_spmm(ro, ci, order, v, b), (values, b))
    assert torch.autograd.gradgradcheck(lambda a, b: OPS.csr_sddmm(ro, ci, order, a, b, 0.5), (a, b))


# ------------------------------------------------------------------------------ fallback and dispatch
@needs_ext
@settings(max_examples=25, deadline=None)
@given(problem=problems(max_size=9), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fallback_equals_extension(problem, dtype):
    mask, batch, K = problem
    layout = SparseLayout.from_mask(mask)
    M, N = mask.shape[-2:]
    inputs = [randn(*batch, n, K, dtype=dtype, device="cpu") for n in (M, N, N)]
    padded = randn(*batch, layout.max_nnz, dtype=dtype, device="cpu")  # padding entries hold garbage
    grad = randn(*batch, M, K, dtype=dtype, device="cpu")
    results = []
    for impl in (blockzoo.ops.sparse, fallback):
        q, k, v = (t.clone().requires_grad_() for t in inputs)
        s = impl.sddmm(q, k, layout, 0.5)
        p = impl.sparse_softmax(s, layout)
        out = impl.spmm(p, layout, v)
        out.backward(grad)
        results.append(((s, p, out, impl.sparse_softmax(padded, layout), impl.spmm(padded, layout, inputs[2])),
                        (q.grad, k.grad, v.grad)))
    (outs, grads), (ref_outs, ref_grads) = results
    # elementwise, with an absolute floor of the size of a K-term dot product's rounding: one score
    # that cancels to near zero (a norm-relative error would blow up there) must not fail, a bug still does
    atol = TOL[dtype] * max(1.0, K ** 0.5)
    for ours, theirs in zip(outs, ref_outs):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=TOL[dtype], atol=atol)
    if dtype == torch.float64:  # the softmax backward cancels: fp32 rounding can grow without bound, so
        for ours, theirs in zip(grads, ref_grads):  # gradients are compared in float64 (a bug is O(1))
            assert rel_err(ours, theirs) <= 1e-9


@needs_ext
def test_force_torch_uses_the_fallback_without_warning():
    layout, a, b, values = small_case(False, "cpu", torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ext = sddmm(a, b, layout)
        assert backend.last_path("sddmm") == "extension"
        with blockzoo.ops.force("torch"):
            ref = sddmm(a, b, layout)
            assert backend.last_path("sddmm") == "torch"
    assert rel_err(ext.detach(), ref.detach()) <= TOL[torch.float32]


_CHILD = """
import json, warnings, torch
warnings.simplefilter("always")
from blockzoo.ops import backend
from blockzoo.ops.sparse import SparseLayout, sddmm, sparse_softmax, spmm
torch.manual_seed(0)
mask = torch.rand(2, 7, 9) < 0.4
layout = SparseLayout.from_mask(mask)
q, k, v = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 4)
with warnings.catch_warnings(record=True) as caught:
    outs = [spmm(sparse_softmax(sddmm(q, k, layout, 0.5), layout), layout, v) for _ in range(2)]
print(json.dumps({"out": outs[1].tolist(), "path": backend.last_path("spmm"),
                  "warnings": [str(w.message) for w in caught
                               if issubclass(w.category, backend.BlockzooFallbackWarning)]}))
"""


def test_no_extension_falls_back():
    env = dict(os.environ, BLOCKZOO_NO_EXT="1")
    run = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    child = json.loads(run.stdout.strip().splitlines()[-1])
    assert child["path"] == "torch"
    assert len(child["warnings"]) == 1 and "BLOCKZOO_NO_EXT=1" in child["warnings"][0]
    torch.manual_seed(0)
    mask = torch.rand(2, 7, 9) < 0.4
    layout = SparseLayout.from_mask(mask)
    q, k, v = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 4)
    assert rel_err(torch.tensor(child["out"]), attention(q, k, v, layout, 0.5)) <= TOL[torch.float32]


# ------------------------------------------------------------------------------ input handling
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_batch", [False, True])
def test_non_contiguous_inputs_are_handled(device, per_batch):
    layout, a, b, values = small_case(per_batch, device, torch.float32)
    a, b, values = a.detach(), b.detach(), values.detach()
    assert not any(f(t).is_contiguous() for f in (strided, transposed) for t in (a, b, values))
    for f in (strided, transposed):
        assert torch.equal(sddmm(f(a), f(b), layout), sddmm(a, b, layout))
        assert torch.equal(sparse_softmax(f(values), layout), sparse_softmax(values, layout))
        assert torch.equal(spmm(f(values), layout, f(b)), spmm(values, layout, b))


def test_mismatches_raise_value_errors_naming_both():
    layout, a, b, values = small_case(False, "cpu", torch.float32)
    per_batch = small_case(True, "cpu", torch.float32)[0]
    with pytest.raises(ValueError, match=r"a of shape \(2, 2, 4, 3\) has 4 rows but SparseLayout\(shape=\(5, 6\)"):
        sddmm(a[..., :4, :], b, layout)
    with pytest.raises(ValueError, match=r"b of shape .* has 5 rows but SparseLayout.* has 6 columns"):
        sddmm(a, b[..., :5, :], layout)
    with pytest.raises(ValueError, match="b is torch.float64 but a is torch.float32"):
        sddmm(a, b.double(), layout)
    with pytest.raises(ValueError, match="a is on meta but SparseLayout.* is on cpu"):
        sddmm(a.to("meta"), b.to("meta"), layout)
    with pytest.raises(ValueError, match="b is on meta but values is on cpu"):
        spmm(values, layout, b.to("meta"))
    with pytest.raises(ValueError, match=r"values of shape \(2, 2, 3\) must end in"):
        sparse_softmax(values[..., :3], layout)
    with pytest.raises(ValueError, match=r"needs a leading batch dim of 2"):
        sddmm(a[:1], b[:1], per_batch)
    with pytest.raises(ValueError, match="must share batch dims"):
        spmm(values[:1], layout, b)
    with pytest.raises(TypeError, match="a has dtype torch.int64"):
        sddmm(a.long(), b, layout)
    with pytest.raises(TypeError, match="layout must be a SparseLayout"):
        spmm(values, layout.to_dense(), b)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_raw_ops_check_their_arguments(device):
    """Bad arguments raise TypeError / ValueError with a message, never crash (messages hold numbers and shapes)."""
    layout, a, b, values = small_case(True, device, torch.float32)
    ro, ci, order = layout_args(layout)
    with pytest.raises(TypeError, match="row_offsets must be int32"):
        OPS.csr_sddmm(ro.long(), ci, order, a, b, 1.0)
    with pytest.raises(ValueError, match="leading batch dim of 2"):
        OPS.csr_spmm(ro, ci, order, values.detach()[:1], b.detach()[:1])
    with pytest.raises(ValueError, match="leading batch dim of 2"):
        OPS.csr_sddmm(ro, ci, order, a.detach()[:1], b.detach()[:1], 1.0)
    n_cols = int(ci.max())  # csr_transpose validates column indices on both devices
    with pytest.raises(ValueError, match=rf"column {n_cols} of pattern \d is outside \[0, {n_cols}\)"):
        OPS.csr_transpose(ro, ci, n_cols)


def _int32(*values: int, device: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_raw_ops_validate_index_values(device):
    """A raw call with an out-of-range or negative column, broken offsets, a row order that is not a permutation
    or a perm out of range raises ValueError naming the value (no segfault, no garbage) on the CPU and CUDA
    kernels; check=False (what the Python ops pass for a validated SparseLayout) skips the check."""
    ro, ci = _int32(0, 2, 3, 5, device=device), _int32(0, 3, 1, 2, 3, device=device)
    order = _int32(0, 2, 1, device=device)
    a, b, values = (torch.randn(*s, device=device) for s in ((3, 4), (4, 4), (5,)))
    cases = [
        (lambda: OPS.csr_sddmm(ro, _int32(0, 4, 1, 2, 3, device=device), order, a, b, 1.0), r"column 4 .*\[0, 4\)"),
        (lambda: OPS.csr_sddmm(ro, _int32(0, -1, 1, 2, 3, device=device), order, a, b, 1.0), r"column -1 "),
        (lambda: OPS.csr_spmm(ro, _int32(0, 3, 1, 2, 9, device=device), order, values, b), r"column 9 "),
        (lambda: OPS.csr_spmm(_int32(0, 2, 1, 5, device=device), ci, order, values, b), "non-decreasing"),
        (lambda: OPS.csr_spmm(_int32(1, 2, 3, 5, device=device), ci, order, values, b), "must start at 0"),
        (lambda: OPS.csr_spmm(_int32(0, 2, 3, 7, device=device), ci, order, values, b), "end at 7"),
        (lambda: OPS.csr_spmm(ro, ci, _int32(0, 0, 1, device=device), values, b), "row_order .* permutation"),
        (lambda: OPS.csr_spmm(ro, ci, order, values, b, _int32(0, 1, 2, 3, 5, device=device)), r"perm\[0, 4\] = 5"),
        (lambda: OPS.csr_softmax(_int32(0, 2, 3, 9, device=device), order, values), "end at 9"),
        (lambda: OPS.csr_softmax_backward(ro, _int32(0, 3, 1, device=device), values, values), "row_order"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    ref = OPS.csr_spmm(ro, ci, order, values, b)
    assert torch.equal(OPS.csr_spmm(ro, ci, order, values, b, check=False), ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend_name", ["auto", "torch"])  # the compiled kernel (when built) and the fallback
def test_sparse_softmax_nan_and_inf_rows(device, backend_name):
    """A NaN or +inf value gives a NaN row (a dense softmax over the row's entries); only a row of -inf is zeros."""
    layout = SparseLayout.from_mask(torch.ones(4, 3, dtype=torch.bool, device=device))
    values = torch.tensor([[0.5, float("nan"), 1.0], [float("inf"), 0.0, 1.0], [float("-inf")] * 3,
                           [float("-inf"), 0.0, 1.0]], device=device).reshape(12)
    with blockzoo.ops.force(backend_name):
        out = sparse_softmax(values, layout).reshape(4, 3).cpu()
    assert out[:2].isnan().all() and (out[2] == 0).all()
    assert torch.allclose(out[3], torch.softmax(torch.tensor([float("-inf"), 0.0, 1.0]), 0))


def test_compiles_without_graph_breaks():
    layout, a, b, values = small_case(True, "cpu", torch.float32)
    layout.transpose()
    compiled = torch.compile(attention, backend="aot_eager", fullgraph=True)
    v = b.detach().clone().requires_grad_()
    out = compiled(a, b, v, layout, 0.5)
    out.sum().backward()
    grads = [t.grad.clone() for t in (a, b, v)]
    for t in (a, b, v):
        t.grad = None
    ref = attention(a, b, v, layout, 0.5)
    ref.sum().backward()
    assert rel_err(out.detach(), ref.detach()) <= TOL[torch.float32]
    for g, t in zip(grads, (a, b, v)):
        assert rel_err(g, t.grad) <= TOL[torch.float32]
