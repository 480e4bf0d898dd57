"""Parameter gradients of the fused ops under autocast, as precise as PyTorch's: the weight and bias of
``linear_act``, the weight of ``fused_linear_cross_entropy`` (summed over several chunks), the bias of
``dropout_bias_act`` and the norms' weight and bias, on the shapes xFormers tested its fused linear with.

Each is compared with PyTorch's gradient under the same autocast (within 1e-3 relative) and with the exact
sum over PyTorch's own rounded operands rounded once to the dtype the op computes in: within one unit in the
last place everywhere (a reduction rounded in half precision on the way is several units off). CPU: the
Triton kernels under the interpreter in fp16 (its bf16 conversions truncate); CUDA (``-m gpu``): fp16 and bf16.
"""
import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from blockzoo import ops
from blockzoo.ops import autocast, torch_ref
from blockzoo.ops.triton import cross_entropy as triton_ce
from blockzoo.ops.triton import linear_act as triton_linear
from blockzoo.ops.triton.dropout_bias_act import bias_act_backward

pytestmark = pytest.mark.filterwarnings("ignore::blockzoo.BlockzooFallbackWarning",
                                        "ignore:overflow encountered in exp:RuntimeWarning",
                                        "ignore:Mismatch dtype between input and weight:UserWarning")
SHAPES = [(128, 256), (8, 384, 128), (8, 784, 512)]  # xFormers' fused-linear test; linear to shape[-1] // 2
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def cases(cpu_shapes: int) -> list:
    """(device, dtype, shape): the first ``cpu_shapes`` shapes on the CPU in fp16 (the interpreter is slow;
    the activations' kernel on the smallest), every shape on CUDA in fp16 and bf16."""
    return ([("cpu", torch.float16, s) for s in SHAPES[:cpu_shapes]]
            + [pytest.param("cuda", d, s, marks=GPU) for d in (torch.float16, torch.bfloat16) for s in SHAPES])


def spacing(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The distance from |t| to the next value of ``dtype`` (a unit in the last place), in float64."""
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(t.double())
    return torch.ldexp(torch.full_like(t, info.eps, dtype=torch.float64), exponent - 1).clamp_min(info.tiny * info.eps)


def assert_as_precise_as_pytorch(ours: torch.Tensor, pytorch: torch.Tensor, exact: torch.Tensor,
                                 absum: torch.Tensor, dtype: torch.dtype) -> None:
    """``ours`` (a parameter's gradient) within 1e-3 of PyTorch's (beyond PyTorch's own distance from the exact
    gradient), and the exact sum (float64; ``absum`` the sum of its terms' magnitudes) rounded once to ``dtype``:
    within a unit in the last place, plus float32 accumulation error where the sum cancels, and equal to it
    but for the rare last bit that float32 accumulation order flips."""
    assert rel_err(ours, pytorch) <= 1e-3 + rel_err(pytorch, exact)
    err = (ours.double() - exact).abs()
    assert (err <= spacing(exact, dtype) + 2**-20 * absum).all(), float((err / spacing(exact, dtype)).max())
    flipped = (ours.to(dtype) != exact.to(dtype)).float().mean()
    assert flipped <= 0.01, f"{flipped:.1%} of the elements differ from the once-rounded sum"


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


@pytest.fixture
def torch_epilogue():
    """The GEMM by torch on the CPU: the pre-activation is then PyTorch's own, bit for bit, and the comparison
    isolates the backward (the Triton GEMM, rounding once, differs from the CPU's addmm in the last bit)."""
    previous = triton_linear.set_epilogue("cublas")
    yield
    triton_linear.set_epilogue(previous)


def kernel_dz(dy: torch.Tensor, pre: torch.Tensor, activation: str, dtype: torch.dtype) -> torch.Tensor:
    """The dz our backward kernel stores for these operands (dy * activation'(pre), rounded once to ``dtype``),
    in float64: the terms whose sum the parameter gradients are."""
    dz, _ = bias_act_backward(dy.contiguous(), pre.contiguous(), activation, False)
    return dz.to(dtype).double()


ACTIVATIONS = ["none", "gelu", "squared_relu"]
LINEAR_CASES = ([("cpu", torch.float16, SHAPES[0], a) for a in ACTIVATIONS] + [("cpu", torch.float16, SHAPES[1], "none")]
                + [pytest.param(*c.values, a, marks=GPU) for c in cases(cpu_shapes=0) for a in ACTIVATIONS])


@pytest.mark.parametrize("device,dtype,shape,activation", LINEAR_CASES, ids=str)
def test_linear_act_gradients(device, dtype, shape, activation, torch_epilogue):
    k = shape[-1]
    x = torch.randn(shape, device=device)
    lin = torch.nn.Linear(k, k // 2, device=device)
    grad = torch.randn(*shape[:-1], k // 2, device=device)
    xr, wr, br = leaves(x, lin.weight, lin.bias)
    with torch.autocast(device, dtype=dtype):
        y = torch_ref.activation(F.linear(xr, wr, br), activation)
    y.backward(grad.to(y.dtype))
    xs, ws, bs = leaves(x, lin.weight, lin.bias)
    with torch.autocast(device, dtype=dtype), ops.force("triton"):
        out = ops.linear_act(xs, ws, bs, activation)
    out.backward(grad.to(out.dtype))
    assert out.dtype == y.dtype and ws.grad.dtype == bs.grad.dtype == torch.float32
    x_low = x.to(dtype).reshape(-1, k)
    pre = torch.addmm(lin.bias.detach().to(dtype), x_low, lin.weight.detach().to(dtype).t())  # our forward's
    dz, x_low = kernel_dz(grad.to(out.dtype).reshape(pre.shape), pre, activation, dtype), x_low.double()
    assert_as_precise_as_pytorch(ws.grad, wr.grad, dz.t() @ x_low, dz.t().abs() @ x_low.abs(), dtype)
    assert_as_precise_as_pytorch(bs.grad, br.grad, dz.sum(0), dz.abs().sum(0), dtype)
    assert rel_err(xs.grad, xr.grad) <= 1e-3


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
@pytest.mark.parametrize("device,dtype,shape", cases(cpu_shapes=1), ids=str)
def test_fused_linear_cross_entropy_weight_gradient(device, dtype, shape, reduction, monkeypatch):
    """Four chunks of rows: the weight gradient sums them in float32 and rounds once. 'mean' is scaled by the
    number of counted rows, as a GradScaler scales a loss, so that PyTorch's fp16 dlogits are rounded at the
    scale ours are (ours are rounded before the 1 / N, so an unscaled mean keeps them out of fp16's subnormals)."""
    hidden = torch.randn(shape, device=device).reshape(-1, shape[-1])
    n, d = hidden.shape
    vocab = d // 2 + 3
    monkeypatch.setattr(triton_ce, "CHUNK_BYTES", n * vocab * 4 // 4)
    weight = torch.randn(vocab, d, device=device) / d**0.5
    target = torch.randint(0, vocab, (n,), device=device)
    target[::7] = -100
    scale = float((target != -100).sum()) if reduction == "mean" else 1.0
    hr, wr = leaves(hidden, weight)
    with torch.autocast(device, dtype=dtype):
        logits = F.linear(hr, wr)
        logits.retain_grad()
        loss = F.cross_entropy(logits, target, reduction=reduction)
    (loss * scale).sum().backward()
    hs, ws = leaves(hidden, weight)
    with torch.autocast(device, dtype=dtype), ops.force("triton"):
        ours = ops.fused_linear_cross_entropy(hs, ws, target, reduction=reduction)
    (ours * scale).sum().backward()
    assert ours.dtype == loss.dtype == torch.float32 and ws.grad.dtype == torch.float32
    assert rel_err(ours.detach(), loss.detach()) <= 1e-5
    dl, h_low = logits.grad.double(), hidden.to(dtype).double()
    assert_as_precise_as_pytorch(ws.grad, wr.grad, dl.t() @ h_low, dl.t().abs() @ h_low.abs(), dtype)
    assert rel_err(hs.grad, hr.grad) <= 1e-3


@pytest.mark.parametrize("activation", ["gelu", "squared_relu"])
@pytest.mark.parametrize("device,dtype,shape", cases(cpu_shapes=1), ids=str)
def test_dropout_bias_act_bias_gradient(device, dtype, shape, activation):
    """x and bias in the autocast dtype (a linear's output, a half-precision model's bias). Our kernel adds the
    bias in float32 where PyTorch rounds x + bias first: the exact sum is over dz of the unrounded sum."""
    x = torch.randn(shape, device=device, dtype=dtype)
    bias = torch.randn(shape[-1], device=device, dtype=dtype)
    grad = torch.randn(shape, device=device).to(dtype)
    xr, br = leaves(x, bias)
    with torch.autocast(device, dtype=dtype):
        y = torch_ref.activation(xr + br, activation)
    y.backward(grad.to(y.dtype))
    xs, bs = leaves(x, bias)
    with torch.autocast(device, dtype=dtype), ops.force("triton"):
        out = ops.dropout_bias_act(xs, bs, 0.0, activation)
    out.backward(grad.to(out.dtype))
    with torch.autocast(device, dtype=dtype):  # the dtype the op computes in: fp32 where PyTorch's activation is
        computed = autocast.cast("dropout_bias_act", x, bias, activation=activation)[0].dtype
    dz = kernel_dz(grad, x.float() + bias.float(), activation, computed).reshape(-1, shape[-1])
    assert_as_precise_as_pytorch(bs.grad, br.grad, dz.sum(0), dz.abs().sum(0), dtype)


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("param_dtype", ["float32", "autocast"])
@pytest.mark.parametrize("device,dtype,shape", cases(cpu_shapes=2), ids=str)
def test_norm_parameter_gradients(device, dtype, shape, param_dtype, norm):
    """Norm weights (and LayerNorm's bias), float32 or in the autocast dtype, of an input in the autocast dtype:
    the kernels' per-program float32 partial sums are added in float32 and rounded once. (PyTorch's own CPU
    LayerNorm backward in fp16 is off by up to 0.6%: ours is compared with it beyond that.)"""
    n = shape[-1]
    x = torch.randn(shape, device=device, dtype=dtype)
    pdtype = torch.float32 if param_dtype == "float32" else dtype
    w, b = torch.randn(n, device=device, dtype=pdtype), torch.randn(n, device=device, dtype=pdtype)
    grad = torch.randn(shape, device=device)
    eps = 1e-5 if norm == "layer_norm" else 1e-6
    theirs = {"layer_norm": lambda xs, ws, bs: F.layer_norm(xs, (n,), ws, bs, eps),
              "rms_norm": lambda xs, ws, bs: F.rms_norm(xs, (n,), ws, eps)}[norm]
    ours = {"layer_norm": lambda xs, ws, bs: ops.layer_norm(xs, n, ws, bs, eps),
            "rms_norm": lambda xs, ws, bs: ops.rms_norm(xs, n, ws, eps)}[norm]

    def run(fn, path):
        xs, ws, bs = leaves(x, w, b if norm == "layer_norm" else None)
        with torch.autocast(device, dtype=dtype), ops.force(path):
            y = fn(xs, ws, bs)
        y.backward(grad.to(y.dtype))
        return y.dtype, [p.grad for p in (ws, bs) if p is not None]

    want_dtype, want = run(theirs, "torch")
    got_dtype, got = run(ours, "triton")
    assert got_dtype == want_dtype
    xd, dy = x.double().reshape(-1, n), grad.to(want_dtype).double().reshape(-1, n)
    xc = xd - xd.mean(-1, keepdim=True) if norm == "layer_norm" else xd
    xhat = xc * torch.rsqrt(xc.square().mean(-1, keepdim=True) + eps)
    terms = [dy * xhat, dy]
    for g, p, t in zip(got, want, terms):
        assert g.dtype == p.dtype == pdtype
        assert_as_precise_as_pytorch(g, p, t.sum(0), t.abs().sum(0), pdtype if pdtype != torch.float32 else dtype)
