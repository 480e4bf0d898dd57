"""fused_linear_cross_entropy: the chunked Triton path (interpreter) against F.cross_entropy in float64."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import TOL, rel_err

import blockzoo
from blockzoo.ops import torch_ref
from blockzoo.ops.triton import cross_entropy as triton_ce

OP = "fused_linear_cross_entropy"


def run_fast(h, w, t, ignore_index=-100, reduction="mean"):
    with blockzoo.ops.force("triton"):
        loss = blockzoo.ops.fused_linear_cross_entropy(h, w, t, ignore_index, reduction)
    assert blockzoo.ops.last_path(OP) == "triton"
    return loss


def leaf(t):
    return t.detach().requires_grad_()


def check(h, w, t, ignore_index=-100, reduction="mean", tol_scale=1.0):
    """Loss and grads (hidden, weight) against F.cross_entropy(h @ W.T) in float64."""
    hs, ws = leaf(h), leaf(w)
    loss = run_fast(hs, ws, t, ignore_index, reduction)
    hd, wd = leaf(h.double()), leaf(w.double())
    ref = F.cross_entropy(hd @ wd.t(), t, ignore_index=ignore_index, reduction=reduction)
    g = torch.rand(ref.shape, dtype=torch.float64) + 0.5
    loss.backward(g.float())
    ref.backward(g)
    tol = TOL[h.dtype] * 4 * tol_scale
    assert loss.dtype == torch.float32 and loss.shape == ref.shape
    assert rel_err(loss.detach(), ref.detach()) <= tol
    assert rel_err(hs.grad, hd.grad) <= tol
    assert rel_err(ws.grad, wd.grad) <= tol


def inputs(n, d, v, dtype=torch.float32, ignore_every=4):
    h = torch.randn(n, d, dtype=dtype)
    w = torch.randn(v, d, dtype=dtype) / d**0.5
    t = torch.randint(0, v, (n,))
    if ignore_every:
        t[::ignore_every] = -100
    return h, w, t


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reductions_and_dtypes(reduction, dtype):
    check(*inputs(21, 24, 101, dtype), reduction=reduction, tol_scale=2.0 if dtype == torch.bfloat16 else 1.0)


@pytest.mark.parametrize("n,d,v", [(1, 1, 1), (1, 7, 333), (7, 5, 2), (40, 3, 17)])
def test_odd_sizes(n, d, v):
    check(*inputs(n, d, v, ignore_every=0))


def test_several_chunks(monkeypatch):
    # a small budget splits the 37 rows into uneven chunks: grad_weight accumulates across them
    monkeypatch.setattr(triton_ce, "CHUNK_BYTES", 10 * 64 * 4)
    assert triton_ce._chunk_rows(37, 64) < 37
    for reduction in ("mean", "none"):
        check(*inputs(37, 12, 64), reduction=reduction)


def test_non_contiguous_inputs():
    h = torch.randn(16, 30).t()  # (30, 16), column-major
    w = torch.randn(16, 45).t() / 4  # (45, 16), column-major
    t = torch.randint(0, 45, (60,))[::2]
    check(h, w, t)
    check(torch.randn(9, 20)[:, 2:18], torch.randn(33, 16) / 4, torch.randint(0, 33, (9,)))


def test_ignore_index_inside_the_vocabulary():
    h, w, t = inputs(18, 8, 10, ignore_every=0)
    t[::3] = 0
    check(h, w, t, ignore_index=0)


def test_all_targets_ignored():
    h, w, _ = inputs(6, 8, 11)
    t = torch.full((6,), -100)
    hs, ws = leaf(h), leaf(w)
    loss = run_fast(hs, ws, t, reduction="mean")
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(h @ w.t(), t))  # 0 / 0, as torch
    loss.backward()
    assert torch.equal(hs.grad, torch.zeros_like(h)) and torch.equal(ws.grad, torch.zeros_like(w))
    assert run_fast(h, w, t, reduction="sum").item() == 0.0
    assert torch.equal(run_fast(h, w, t, reduction="none"), torch.zeros(6))


def test_partial_grads_and_no_grad():
    h, w, t = inputs(10, 8, 13)
    hs = leaf(h)
    run_fast(hs, w, t).backward()
    hd = leaf(h.double())
    F.cross_entropy(hd @ w.double().t(), t).backward()
    assert rel_err(hs.grad, hd.grad) <= TOL[torch.float32] * 4
    with torch.no_grad():
        loss = run_fast(h, w, t)
    assert rel_err(loss, torch_ref.fused_linear_cross_entropy(h.double(), w.double(), t)) <= TOL[torch.float32] * 4


@pytest.mark.parametrize("bad", [13, -1, 1000])
def test_bad_targets_raise(bad):
    h, w, t = inputs(5, 4, 13)
    t[2] = bad
    with pytest.raises(ValueError, match=f"target {bad}"):
        run_fast(h, w, t)


@pytest.mark.parametrize("bad", [13, -1])
def test_bad_targets_raise_on_the_torch_path_too(bad):
    h, w, t = inputs(5, 4, 13)
    t[2] = bad
    with blockzoo.ops.force("torch"), pytest.raises(ValueError, match=f"target {bad} is out of range"):
        blockzoo.ops.fused_linear_cross_entropy(h, w, t)


def test_bad_arguments():
    h, w, t = inputs(5, 4, 13)
    with pytest.raises(TypeError, match="dtype"):
        run_fast(h, w.half(), t)
    with pytest.raises(ValueError, match="reduction"):
        run_fast(h, w, t, reduction="avg")
    with pytest.raises(ValueError, match="rows"):
        run_fast(h, w, t[:4])


def test_compiles_without_graph_break():
    h, w, t = inputs(9, 8, 21)
    hs, ws = leaf(h), leaf(w)

    def f(h, w, t):
        return blockzoo.ops.fused_linear_cross_entropy(h, w, t)

    with blockzoo.ops.force("triton"):
        loss = torch.compile(f, backend="aot_eager", fullgraph=True)(hs, ws, t)
        loss.backward()
    hd, wd = leaf(h.double()), leaf(w.double())
    ref = F.cross_entropy(hd @ wd.t(), t)
    ref.backward()
    assert rel_err(loss.detach(), ref.detach()) <= TOL[torch.float32] * 4
    assert rel_err(hs.grad, hd.grad) <= TOL[torch.float32] * 4
    assert rel_err(ws.grad, wd.grad) <= TOL[torch.float32] * 4


def test_cpu_default_backend_warns_once_and_matches():
    h, w, t = inputs(6, 8, 11)
    with pytest.warns(blockzoo.ops.BlockzooFallbackWarning):
        loss = blockzoo.ops.fused_linear_cross_entropy(h, w, t)
    assert blockzoo.ops.last_path(OP) == "torch"
    assert torch.allclose(loss, F.cross_entropy(h @ w.t(), t))
    with warnings.catch_warnings():
        warnings.simplefilter("error", blockzoo.ops.BlockzooFallbackWarning)
        blockzoo.ops.fused_linear_cross_entropy(h, w, t)


def test_autocast_runs_in_the_autocast_dtype():
    h, w, t = inputs(12, 16, 30)
    hs, ws = leaf(h), leaf(w)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = run_fast(hs, ws, t)
    assert loss.dtype == torch.float32
    loss.backward()
    assert hs.grad.dtype == ws.grad.dtype == torch.float32
    hd, wd = leaf(h.double()), leaf(w.double())
    F.cross_entropy(hd @ wd.t(), t).backward()
    assert rel_err(hs.grad, hd.grad) <= TOL[torch.float16] * 4
    assert rel_err(ws.grad, wd.grad) <= TOL[torch.float16] * 4
