"""Triton softmax (interpreter) against the float64 PyTorch reference, forward and backward."""
import warnings

import pytest
import torch
from helpers import TOL, rel_err

import blockzoo
from blockzoo.ops import BackendUnavailableError, BlockzooFallbackWarning, torch_ref
from blockzoo.ops.triton import launch, rowwise
from blockzoo.ops.triton import softmax as triton_softmax


pytestmark = pytest.mark.usefixtures("poisoned_outputs")  # fixtures in tests/ops/conftest.py


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Split rows longer than 8 elements in chunks of 4, so short square inputs cross many chunks."""
    monkeypatch.setattr(rowwise, "MAX_FUSED_N", 8)
    monkeypatch.setattr(rowwise, "SPLIT_CHUNK", 4)


def check(x, mask=None, causal=False, log=False):
    """Run the Triton path on x (forward and backward) and compare with torch_ref in float64.

    Returns (y, dx, dmask) from the Triton path.
    """
    x = x.detach().requires_grad_()
    mask_grad = mask is not None and mask.requires_grad
    with blockzoo.ops.force("triton"):
        y = blockzoo.ops.softmax(x, mask=mask, causal=causal, log=log)
    assert blockzoo.ops.last_path("softmax") == "triton"
    xd = x.detach().double().requires_grad_()
    md = None if mask is None else mask.detach().double() if mask.is_floating_point() else mask
    if mask_grad:
        md.requires_grad_()
    ref = torch_ref.softmax(xd, -1, md, causal, log)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert not torch.isnan(y).any()
    assert torch.equal(torch.isinf(y), torch.isinf(ref)), "-inf entries differ from the reference"
    tol = TOL[x.dtype]
    assert rel_err(y.detach(), ref.detach()) < tol
    dy = torch.randn(x.shape, dtype=torch.float64)
    wrt = (x, mask) if mask_grad else (x,)
    grads = torch.autograd.grad(y, wrt, dy.to(x.dtype))
    refs = torch.autograd.grad(ref, (xd, md) if mask_grad else (xd,), dy)
    for g, r in zip(grads, refs):
        assert torch.isfinite(g).all()
        assert rel_err(g, r) < tol * 2
    return y, grads[0], grads[1] if mask_grad else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 7, 333, 1025, 4097])
@pytest.mark.parametrize("log", [False, True])
def test_plain_rows(n, dtype, log):
    check(torch.randn(3, 4, n, dtype=dtype) * 3, log=log)


def test_bfloat16():
    check(torch.randn(6, 257, dtype=torch.bfloat16) * 3)
    check(torch.randn(6, 257, dtype=torch.bfloat16) * 3, log=True)


def test_many_short_rows_per_program():
    check(torch.randn(1000, 5))


@pytest.mark.parametrize("view", ["transposed", "row_slice", "col_slice"])
def test_non_contiguous(view):
    base = torch.randn(2, 40, 70)
    x = {"transposed": base.transpose(1, 2), "row_slice": base[:, ::3], "col_slice": base[..., 5:68]}[view]
    assert not x.is_contiguous()
    check(x)


def test_non_contiguous_grad_output():
    x = torch.randn(16, 33, requires_grad=True)
    with blockzoo.ops.force("triton"):
        y = blockzoo.ops.softmax(x)
    dy = torch.randn(33, 16).t()
    (g,) = torch.autograd.grad(y, x, dy)
    xd = x.detach().double().requires_grad_()
    (r,) = torch.autograd.grad(torch_ref.softmax(xd), xd, dy.double())
    assert rel_err(g, r) < TOL[torch.float32]


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bool_mask_broadcast_over_batch_and_heads(dtype, log):
    x = torch.randn(2, 3, 9, 21, dtype=dtype)
    mask = torch.rand(9, 21) > 0.4
    mask[4] = False  # a fully masked row
    y, dx, _ = check(x, mask=mask, log=log)
    assert (y[:, :, 4] == 0).all() and (dx[:, :, 4] == 0).all()
    assert (dx[:, :, ~mask] == 0).all()


@pytest.mark.parametrize("log", [False, True])
def test_additive_mask(log):
    x = torch.randn(2, 3, 9, 21)
    mask = torch.randn(9, 21)
    if not log:  # log-softmax grads at -inf entries differ from autograd's formal value: tested separately
        mask[torch.rand(9, 21) < 0.3] = float("-inf")
        mask[2] = float("-inf")
    y, _, _ = check(x, mask=mask, log=log)
    if not log:
        assert (y[:, :, 2] == 0).all()


def test_additive_minus_inf_log_softmax_gets_zero_grad():
    x = torch.randn(4, 6, 17, requires_grad=True)
    mask = torch.randn(6, 17)
    mask[torch.rand(6, 17) < 0.3] = float("-inf")
    mask[1] = float("-inf")
    with blockzoo.ops.force("triton"):
        y = blockzoo.ops.softmax(x, mask=mask, log=True)
    ref = torch_ref.softmax(x.detach().double(), mask=mask.double(), log=True)
    assert torch.equal(torch.isinf(y), torch.isinf(ref)) and rel_err(y.detach(), ref) < TOL[torch.float32]
    (dx,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert (dx[:, torch.isinf(mask)] == 0).all()
    assert (dx[:, 1] == 0).all()


def test_additive_mask_requires_grad_broadcast():
    x = torch.randn(2, 3, 5, 11)
    mask = torch.randn(3, 1, 11, requires_grad=True)  # broadcast over batch and query rows
    _, _, dmask = check(x, mask=mask)
    assert dmask.shape == mask.shape


def test_additive_mask_grad_log_and_dtype():
    x = torch.randn(4, 13, dtype=torch.float16)
    mask = torch.randn(13, dtype=torch.float32, requires_grad=True)
    _, _, dmask = check(x, mask=mask, log=True)
    assert dmask.dtype == torch.float32


@pytest.mark.parametrize("log", [False, True])
def test_causal(log):
    y, dx, _ = check(torch.randn(2, 3, 13, 13), causal=True, log=log)
    upper = torch.ones(13, 13, dtype=torch.bool).triu(1)
    assert (dx[..., upper] == 0).all()
    if not log:
        assert (y[..., upper] == 0).all()


def test_causal_rectangular():
    check(torch.randn(2, 7, 12), causal=True)
    check(torch.randn(2, 12, 7), causal=True, log=True)


def test_causal_and_mask():
    mask = torch.rand(2, 1, 10, 10) > 0.3
    mask[1, 0, :, 0] = False  # row 0 of batch 1 keeps nothing once causal is applied
    y, dx, _ = check(torch.randn(2, 3, 10, 10), mask=mask, causal=True)
    assert (y[1, :, 0] == 0).all() and (dx[1, :, 0] == 0).all()
    check(torch.randn(2, 3, 10, 10), mask=torch.randn(10, 10), causal=True, log=True)


def test_mask_broadcast_along_columns():
    mask = torch.rand(2, 1, 6, 1) > 0.3
    check(torch.randn(2, 3, 6, 9), mask=mask)


def test_mask_with_many_broadcast_dims_and_strides():
    x = torch.randn(2, 3, 2, 4, 15)
    mask = torch.rand(2, 1, 2, 1, 15) > 0.3  # alternating broadcasts: more than three row dims
    check(x, mask=mask)
    tmask = (torch.rand(2, 15, 4) > 0.3).transpose(1, 2)  # strided mask view
    check(torch.randn(2, 4, 15), mask=tmask)


def test_fully_masked_everything():
    x = torch.randn(3, 8)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    for log in (False, True):
        y, dx, _ = check(x, mask=mask, log=log)
        assert (y == 0).all() and (dx == 0).all()


@pytest.mark.parametrize("log", [False, True])
def test_split_rows(split_rows, log):
    check(torch.randn(2, 3, 1025) * 3, log=log)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_split_rows_masked_causal(split_rows, dtype):
    x = torch.randn(1, 2, 4, 400, dtype=dtype)
    mask = torch.rand(4, 400) > 0.5
    mask[1] = False
    mask[2, :256] = False  # whole chunks masked
    y, dx, _ = check(x, mask=mask, causal=True)
    assert (y[:, :, 1] == 0).all() and (dx[:, :, 1] == 0).all()
    check(x, mask=mask, log=True)


@pytest.mark.parametrize("log", [False, True])
def test_split_rows_causal_diagonal_across_chunks(tiny_chunks, log):
    mask = torch.rand(13, 13) > 0.3
    mask[5] = False
    y, dx, _ = check(torch.randn(1, 13, 13), mask=mask, causal=True, log=log)
    assert (y[:, 5] == 0).all() and (dx[:, 5] == 0).all()


def test_split_rows_additive_mask_grad(split_rows):
    mask = torch.randn(2, 1, 513, requires_grad=True)
    check(torch.randn(2, 3, 513), mask=mask)


def test_split_path_is_taken(split_rows, monkeypatch):
    calls = []
    run = launch.launch
    monkeypatch.setattr(launch, "launch", lambda k, *a, **kw: (calls.append(k), run(k, *a, **kw)))
    check(torch.randn(2, 300))
    assert triton_softmax._fwd_stats_kernel in calls and triton_softmax._bwd_stats_kernel in calls


def test_empty():
    with blockzoo.ops.force("triton"):
        assert blockzoo.ops.softmax(torch.randn(0, 5)).shape == (0, 5)


def test_cpu_auto_falls_back_with_one_warning():
    x = torch.randn(4, 10)
    with pytest.warns(BlockzooFallbackWarning, match="softmax"):
        y = blockzoo.ops.softmax(x)
    assert blockzoo.ops.last_path("softmax") == "torch"
    assert rel_err(y, torch_ref.softmax(x.double())) < TOL[torch.float32]
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlockzooFallbackWarning)
        blockzoo.ops.softmax(x)  # warned once already


def test_forced_triton_rejects_float64():
    with blockzoo.ops.force("triton"), pytest.raises(BackendUnavailableError, match="float64"):
        blockzoo.ops.softmax(torch.randn(3, 4, dtype=torch.float64))


def test_torch_compile_fullgraph():
    x = torch.randn(2, 5, 9, requires_grad=True)
    mask = torch.rand(5, 9) > 0.3

    def f(x):
        return (blockzoo.ops.softmax(x, mask=mask, causal=True) * x).sum()

    with blockzoo.ops.force("triton"):
        out = torch.compile(f, backend="eager", fullgraph=True)(x)
        (g,) = torch.autograd.grad(out, x)
    xd = x.detach().double().requires_grad_()
    ref = (torch_ref.softmax(xd, mask=mask, causal=True) * xd).sum()
    (gr,) = torch.autograd.grad(ref, xd)
    assert abs(out.item() - ref.item()) < 1e-4 and rel_err(g, gr) < TOL[torch.float32]


@pytest.mark.parametrize("log", [False, True])
def test_custom_op_path_autograd(log):
    """The registered op (what torch.compile traces) gives the same output and gradients as the eager path."""
    x = torch.randn(2, 3, 6, 11, requires_grad=True)
    mask = torch.randn(6, 11, requires_grad=True)
    y = triton_softmax._softmax.op(x, mask, True, log)
    xd, md = x.detach().double().requires_grad_(), mask.detach().double().requires_grad_()
    ref = torch_ref.softmax(xd, -1, md, True, log)
    assert torch.equal(torch.isinf(y), torch.isinf(ref)) and rel_err(y.detach(), ref.detach()) < TOL[torch.float32]
    dy = torch.randn(x.shape)
    for g, r in zip(torch.autograd.grad(y, (x, mask), dy), torch.autograd.grad(ref, (xd, md), dy.double())):
        assert rel_err(g, r) < 2 * TOL[torch.float32]


def test_opcheck():
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    x = torch.randn(2, 3, 7, requires_grad=True)
    torch.library.opcheck(triton_softmax._softmax.op, (x, torch.randn(3, 7, requires_grad=True), True, False),
                          test_utils=utils)
    torch.library.opcheck(triton_softmax._softmax.op, (x, torch.rand(3, 7) > 0.5, False, True), test_utils=utils)
    y = torch.softmax(torch.randn(4, 7), -1)
    torch.library.opcheck(triton_softmax._softmax.backward_op, (y, torch.randn(4, 7), False), test_utils=utils)
