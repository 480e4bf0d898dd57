"""Triton layer_norm / rms_norm (interpreter) against the float64 PyTorch reference, forward and backward."""
import math
import warnings

import pytest
import torch
from helpers import TOL, rel_err

import blockzoo
from blockzoo.ops import BackendUnavailableError, BlockzooFallbackWarning, torch_ref
from blockzoo.ops.triton import launch, rowwise
from blockzoo.ops.triton import layer_norm as triton_ln
from blockzoo.ops.triton import rms_norm as triton_rms

OPS = ("layer_norm", "rms_norm")


pytestmark = pytest.mark.usefixtures("poisoned_outputs")  # fixtures in tests/ops/conftest.py


def run(op, x, shape, weight, bias, eps):
    if op == "layer_norm":
        return blockzoo.ops.layer_norm(x, shape, weight, bias, eps)
    return blockzoo.ops.rms_norm(x, shape, weight, eps)


def reference(op, x, shape, weight, bias, eps):
    if op == "layer_norm":
        return torch_ref.layer_norm(x, shape, weight, bias, eps)
    return torch_ref.rms_norm(x, shape, weight, eps)


def grad_err(g: torch.Tensor, r: torch.Tensor) -> float:
    """Relative error, absolute below a reference norm of 1 (dx is exactly 0 when n == 1 for LayerNorm)."""
    if not torch.isfinite(g).all():
        return float("inf")
    return float((g.double() - r).norm() / max(float(r.norm()), 1.0))


def check(op, x, shape, affine=True, wdtype=None, eps=1e-5):
    """Triton path vs torch_ref in float64: output and the gradients of x, weight and bias."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    wdtype = wdtype or x.dtype
    x = x.detach().requires_grad_()
    weight = torch.randn(shape, dtype=wdtype).requires_grad_() if affine else None
    bias = torch.randn(shape, dtype=wdtype).requires_grad_() if affine and op == "layer_norm" else None
    leaves = [t for t in (x, weight, bias) if t is not None]
    with blockzoo.ops.force("triton"):
        y = run(op, x, shape, weight, bias, eps)
    assert blockzoo.ops.last_path(op) == "triton"
    doubles = [t.detach().double().requires_grad_() for t in leaves]
    dmap = dict(zip([id(t) for t in leaves], doubles))
    ref = reference(op, dmap[id(x)], shape, dmap.get(id(weight)), dmap.get(id(bias)), eps)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    tol = TOL[x.dtype]
    assert rel_err(y.detach(), ref.detach()) < tol
    dy = torch.randn(x.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, dy.to(x.dtype))
    refs = torch.autograd.grad(ref, doubles, dy)
    for leaf, g, r in zip(leaves, grads, refs):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
        assert grad_err(g, r) < tol * 2
    return y, grads


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 7, 333, 1025, 4097])
def test_rows(op, n, dtype):
    check(op, torch.randn(2, 3, n, dtype=dtype) * 2 + 1, n, affine=n != 7)


@pytest.mark.parametrize("op", OPS)
def test_no_affine(op):
    check(op, torch.randn(5, 40), 40, affine=False)


@pytest.mark.parametrize("op", OPS)
def test_bfloat16(op):
    check(op, torch.randn(6, 130, dtype=torch.bfloat16), 130)


@pytest.mark.parametrize("op", OPS)
def test_half_input_float_weights(op):
    check(op, torch.randn(6, 70, dtype=torch.float16), 70, wdtype=torch.float32)


@pytest.mark.parametrize("op", OPS)
def test_large_mean(op):
    check(op, torch.randn(4, 300) + 100.0, 300)


@pytest.mark.parametrize("op", OPS)
def test_multi_dim_normalized_shape(op):
    check(op, torch.randn(2, 3, 5, 11), (5, 11))


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_weight(op):
    x = torch.randn(4, 3, 6, requires_grad=True)
    w = torch.randn(6, 3).t().requires_grad_()  # (3, 6) view with strides (1, 3)
    b = torch.randn(3, 6, requires_grad=True)
    with blockzoo.ops.force("triton"):
        y = run(op, x, (3, 6), w, b, 1e-5)
    ds = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = reference(op, ds[0], (3, 6), ds[1], ds[2], 1e-5)
    assert rel_err(y.detach(), ref.detach()) < TOL[torch.float32]
    dy = torch.randn(4, 3, 6)
    leaves = (x, w, b) if op == "layer_norm" else (x, w)
    grads = torch.autograd.grad(y, leaves, dy)
    refs = torch.autograd.grad(ref, ds[:len(leaves)], dy.double())
    for g, r in zip(grads, refs):
        assert grad_err(g, r) < 2 * TOL[torch.float32]


@pytest.mark.parametrize("op", OPS)
def test_persistent_grid_many_row_tiles(op):
    """More row tiles than backward programs: each program loops and accumulates dw/db partials."""
    check(op, torch.randn(300, 24), 24)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("view", ["transposed", "row_slice", "col_slice"])
def test_non_contiguous(op, view):
    base = torch.randn(2, 40, 70)
    x = {"transposed": base.transpose(1, 2), "row_slice": base[:, ::3], "col_slice": base[..., 5:68]}[view]
    assert not x.is_contiguous()
    check(op, x, x.shape[-1])


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_and_broadcast_grad_output(op):
    x = torch.randn(8, 33, requires_grad=True)
    w = torch.randn(33, requires_grad=True)
    with blockzoo.ops.force("triton"):
        y = run(op, x, 33, w, None, 1e-5)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = reference(op, xd, (33,), wd, None, 1e-5)
    for dy in (torch.randn(33, 8).t(), torch.ones(()).expand(8, 33)):
        grads = torch.autograd.grad(y, (x, w), dy, retain_graph=True)
        refs = torch.autograd.grad(ref, (xd, wd), dy.double(), retain_graph=True)
        for g, r in zip(grads, refs):
            assert rel_err(g, r) < 2 * TOL[torch.float32]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_split_rows(split_rows, op, dtype):
    check(op, torch.randn(3, 1025, dtype=dtype) * 3 + 2, 1025)


@pytest.mark.parametrize("op", OPS)
def test_fused_forward_split_backward(split_rows, op):
    """Rows above half the fused limit: forward in registers, backward split (its register budget is half)."""
    check(op, torch.randn(7, 200) * 3 + 2, 200)


def test_col_sums_two_stage_reduction():
    parts = [torch.randn(150, 37), torch.randn(150, 37)]
    for k in (1, 2):
        outs = rowwise.col_sums(parts[:k], [torch.float16, torch.float32][:k])
        for out, part, dtype in zip(outs, parts, (torch.float16, torch.float32)):
            assert out.dtype == dtype and rel_err(out, part.double().sum(0)) < TOL[torch.float16]


@pytest.mark.parametrize("op", OPS)
def test_custom_op_path_autograd(op):
    """The registered op (what torch.compile traces) gives the same output and gradients as the eager path."""
    x = torch.randn(5, 3, 24, requires_grad=True)
    w, b = torch.randn(24, requires_grad=True), torch.randn(24, requires_grad=True)
    if op == "layer_norm":
        leaves, y = (x, w, b), triton_ln._layer_norm.op(x, 24, w, b, 1e-5)[0]
    else:
        leaves, y = (x, w), triton_rms._rms_norm.op(x, 24, w, 1e-5)[0]
    ds = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = reference(op, ds[0], (24,), ds[1], ds[2], 1e-5)
    assert rel_err(y.detach(), ref.detach()) < TOL[torch.float32]
    dy = torch.randn(5, 3, 24)
    for g, r in zip(torch.autograd.grad(y, leaves, dy), torch.autograd.grad(ref, ds[:len(leaves)], dy.double())):
        assert grad_err(g, r) < 2 * TOL[torch.float32]


@pytest.mark.parametrize("op", OPS)
def test_split_rows_no_affine_multi_dim(split_rows, op):
    check(op, torch.randn(3, 4, 100), (4, 100), affine=False)


def test_split_path_is_taken(split_rows, monkeypatch):
    calls = []
    run = launch.launch
    monkeypatch.setattr(launch, "launch", lambda k, *a, **kw: (calls.append(k), run(k, *a, **kw)))
    check("layer_norm", torch.randn(2, 300), 300)
    assert triton_ln._fwd_stats_kernel in calls and triton_ln._bwd_stats_kernel in calls
    calls.clear()
    check("layer_norm", torch.randn(2, 200), 200)
    assert triton_ln._fwd_stats_kernel not in calls and triton_ln._bwd_stats_kernel in calls


@pytest.mark.parametrize("op", OPS)
def test_saves_only_row_stats(op):
    x = torch.randn(6, 20)
    w = torch.randn(20)
    if op == "layer_norm":
        y, mean, rstd = triton_ln._layer_norm.op(x, 20, w, None, 1e-5)
        assert mean.shape == (6,) and mean.dtype == torch.float32
        assert torch.allclose(mean, x.mean(-1), atol=1e-6)
        var = x.var(-1, unbiased=False)
    else:
        y, rstd = triton_rms._rms_norm.op(x, 20, w, 1e-5)
        var = x.square().mean(-1)
    assert rstd.shape == (6,) and rstd.dtype == torch.float32
    assert torch.allclose(rstd, torch.rsqrt(var + 1e-5), rtol=1e-5)


@pytest.mark.parametrize("op", OPS)
def test_empty(op):
    with blockzoo.ops.force("triton"):
        assert run(op, torch.randn(0, 5), 5, None, None, 1e-5).shape == (0, 5)


@pytest.mark.parametrize("op", OPS)
def test_cpu_auto_falls_back_with_one_warning(op):
    x = torch.randn(4, 10)
    with pytest.warns(BlockzooFallbackWarning, match=op):
        y = run(op, x, 10, None, None, 1e-5)
    assert blockzoo.ops.last_path(op) == "torch"
    assert rel_err(y, reference(op, x.double(), (10,), None, None, 1e-5)) < TOL[torch.float32]
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlockzooFallbackWarning)
        run(op, x, 10, None, None, 1e-5)


@pytest.mark.parametrize("op", OPS)
def test_forced_triton_rejects_float64(op):
    with blockzoo.ops.force("triton"), pytest.raises(BackendUnavailableError, match="float64"):
        run(op, torch.randn(3, 4, dtype=torch.float64), 4, None, None, 1e-5)


def test_torch_compile_fullgraph():
    x = torch.randn(3, 6, 10, requires_grad=True)
    w = torch.randn(10, requires_grad=True)
    b = torch.randn(10, requires_grad=True)

    def f(x, w, b):
        return (blockzoo.ops.layer_norm(x, 10, w, b) * 2 + blockzoo.ops.rms_norm(x, (6, 10))).square().sum()

    with blockzoo.ops.force("triton"):
        out = torch.compile(f, backend="eager", fullgraph=True)(x, w, b)
        grads = torch.autograd.grad(out, (x, w, b))
    ds = [t.detach().double().requires_grad_() for t in (x, w, b)]
    xd, wd, bd = ds
    ref = (torch_ref.layer_norm(xd, (10,), wd, bd) * 2 + torch_ref.rms_norm(xd, (6, 10))).square().sum()
    refs = torch.autograd.grad(ref, ds)
    assert math.isclose(out.item(), ref.item(), rel_tol=1e-5)
    for g, r in zip(grads, refs):
        assert rel_err(g, r) < 2 * TOL[torch.float32]


def test_opcheck():
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    x = torch.randn(4, 3, 9, requires_grad=True)
    w, b = torch.randn(9, requires_grad=True), torch.randn(9, requires_grad=True)
    torch.library.opcheck(triton_ln._layer_norm.op, (x, 9, w, b, 1e-5), test_utils=utils)
    torch.library.opcheck(triton_ln._layer_norm.op, (x, 27, None, None, 1e-5), test_utils=utils)
    torch.library.opcheck(triton_rms._rms_norm.op, (x, 9, w, 1e-6), test_utils=utils)
    _, mean, rstd = triton_ln._layer_norm.op(x, 9, w, b, 1e-5)
    dy = torch.randn(4, 3, 9)
    torch.library.opcheck(triton_ln._layer_norm.backward_op, (dy, x.detach(), 9, w.detach(), b.detach(), mean, rstd),
                          test_utils=utils)
    torch.library.opcheck(triton_rms._rms_norm.backward_op, (dy, x.detach(), 9, None, rstd), test_utils=utils)
