"""linear_act: the Triton GEMM + epilogue (interpreter) against torch_ref in float64.

bf16 is not tested here: the interpreter's ``tl.dot`` on bf16 is wrong (fp16/fp32 are exact enough).
"""
import warnings

import pytest
import torch
from helpers import TOL, rel_err

import blockzoo
from blockzoo.ops import torch_ref
from blockzoo.ops.triton import linear_act as triton_linear

# numpy warns where exp overflows to inf inside sigmoid (gelu_tanh, silu): the intended result
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
OP = "linear_act"


def run_fast(x, w, b, act):
    with blockzoo.ops.force("triton"):
        y = blockzoo.ops.linear_act(x, w, b, act)
    assert blockzoo.ops.last_path(OP) == "triton"
    return y


def leaf(t):
    return None if t is None else t.detach().requires_grad_()


def check(x, w, b, act, tol_scale=1.0):
    """Forward and backward (x, weight, bias grads) against float64 torch_ref."""
    xs, ws, bs = leaf(x), leaf(w), leaf(b)
    y = run_fast(xs, ws, bs, act)
    xd, wd = leaf(x.double()), leaf(w.double())
    bd = leaf(b.double()) if b is not None else None
    ref = torch_ref.linear_act(xd, wd, bd, act)
    g = torch.randn(ref.shape, dtype=torch.float64)
    y.backward(g.to(y.dtype))
    ref.backward(g)
    tol = TOL[x.dtype] * 4 * tol_scale
    assert y.dtype == x.dtype and y.shape == ref.shape
    assert rel_err(y.detach(), ref.detach()) <= tol
    assert rel_err(xs.grad, xd.grad) <= tol
    assert rel_err(ws.grad, wd.grad) <= tol
    if b is not None:
        assert rel_err(bs.grad, bd.grad) <= tol


def inputs(m, k, n, dtype=torch.float32, bias=True):
    x = torch.randn(m, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype) / k**0.5
    return x, w, (torch.randn(n, dtype=dtype) if bias else None)


@pytest.mark.parametrize("act", torch_ref.ACTIVATIONS)
def test_every_activation_fp32(act):
    check(*inputs(37, 45, 70), act)


@pytest.mark.parametrize("act", ["gelu", "relu", "squared_relu"])
def test_fp16(act):
    check(*inputs(33, 40, 50, torch.float16), act)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 3, 1), (1, 33, 7), (333, 17, 9), (3, 70, 129)])
def test_odd_sizes(m, k, n):
    check(*inputs(m, k, n), "gelu")


def test_batched_input_and_no_bias():
    x = torch.randn(2, 3, 5, 24)
    check(x, torch.randn(19, 24) / 5, None, "silu")


def test_non_contiguous_inputs():
    x = torch.randn(40, 21).t()  # (21, 40), column-major
    w = torch.randn(40, 30).t()  # (30, 40), column-major weight
    b = torch.randn(60)[::2]
    check(x, w, b, "gelu_tanh")
    check(torch.randn(12, 50)[:, 5:45], torch.randn(16, 40) / 6, torch.randn(16), "leaky_relu")


def test_partial_grads_and_no_grad():
    x, w, b = inputs(20, 16, 24)
    xs = x.clone().requires_grad_()
    y = run_fast(xs, w, b, "gelu")  # only x needs a gradient
    y.backward(torch.ones_like(y))
    xd = x.double().requires_grad_()
    torch_ref.linear_act(xd, w.double(), b.double(), "gelu").backward(torch.ones(20, 24, dtype=torch.float64))
    assert rel_err(xs.grad, xd.grad) <= TOL[torch.float32] * 4
    with torch.no_grad():  # no pre-activation stored
        assert torch.equal(run_fast(x, w, b, "gelu"), y.detach())


def test_cublaslt_epilogue_switch():
    assert triton_linear.set_epilogue("cublaslt") == "auto"
    try:
        check(*inputs(25, 18, 33), "relu")  # torch._addmm_activation forward, z recomputed in backward
        check(*inputs(25, 18, 33), "silu")  # not a cuBLASLt epilogue: the Triton kernel
    finally:
        triton_linear.set_epilogue("auto")
    with pytest.raises(ValueError, match="epilogue"):
        triton_linear.set_epilogue("cutlass")


def test_bad_arguments():
    x, w, b = inputs(4, 8, 6)
    with pytest.raises(TypeError, match="dtype"):
        run_fast(x, w.half(), b, "gelu")
    with pytest.raises(ValueError, match="weight"):
        run_fast(x, torch.randn(6, 7), b, "gelu")
    with pytest.raises(ValueError, match="activation"):
        run_fast(x, w, b, "swish")


def test_compiles_without_graph_break():
    x, w, b = (leaf(t) for t in inputs(9, 16, 12))

    def f(x, w, b):
        return blockzoo.ops.linear_act(x, w, b, "gelu")

    with blockzoo.ops.force("triton"):
        y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w, b)
        y.sum().backward()
    ref = torch_ref.linear_act(x.double(), w.double(), b.double(), "gelu")
    assert rel_err(y.detach(), ref.detach()) <= TOL[torch.float32] * 4
    assert x.grad is not None and w.grad is not None and b.grad is not None


def test_cpu_default_backend_warns_once_and_matches():
    x, w, b = inputs(6, 10, 7)
    with pytest.warns(blockzoo.ops.BlockzooFallbackWarning):
        y = blockzoo.ops.linear_act(x, w, b, "gelu")
    assert blockzoo.ops.last_path(OP) == "torch"
    assert torch.allclose(y, torch_ref.linear_act(x, w, b, "gelu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", blockzoo.ops.BlockzooFallbackWarning)
        blockzoo.ops.linear_act(x, w, b, "gelu")


def test_autocast_runs_in_the_autocast_dtype():
    x, w, b = (leaf(t) for t in inputs(16, 24, 20))
    with torch.autocast("cpu", dtype=torch.float16):
        y = run_fast(x, w, b, "gelu")
    assert y.dtype == torch.float16
    y.backward(torch.ones_like(y))
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32
    xd, wd, bd = (leaf(t.double()) for t in (x, w, b))
    ref = torch_ref.linear_act(xd, wd, bd, "gelu")
    ref.backward(torch.ones_like(ref))
    assert rel_err(y.detach(), ref.detach()) <= TOL[torch.float16] * 4
    assert rel_err(w.grad, wd.grad) <= TOL[torch.float16] * 4
