"""fast_op: a toy op (y = scale * x, hand-written backward) gives the same values and gradients eagerly,
through opcheck on its registered op, and under torch.compile(fullgraph=True), as a triton_op and as a
custom_op (with fake implementations)."""
import pytest
import torch
import triton
import triton.language as tl

from blockzoo.ops.triton import launch
from blockzoo.ops.triton.registration import fast_op


@triton.jit
def _scale_kernel(X, Y, N, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < N) * scale, mask=offs < N)


def _scaled(x: torch.Tensor, scale: float) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    launch.launch(_scale_kernel, (launch.cdiv(x.numel(), 64),), x, y, x.numel(), scale, BLOCK=64)
    return y


def _forward(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _scaled(x, scale)


def _backward(dy: torch.Tensor, scale: float) -> torch.Tensor:
    return _scaled(dy, scale)


def _save(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.scale = inputs[1]


def _grads(ctx, dy: torch.Tensor, backward) -> tuple:
    return backward(dy, ctx.scale), None


def _fake(x, scale):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


TRITON = fast_op("test_registration_triton", _forward, _backward, save=_save, grads=_grads, differentiable=(0,))
CUSTOM = fast_op("test_registration_custom", _forward, _backward, save=_save, grads=_grads, differentiable=(0,),
                 fake=_fake, backward_fake=_fake)
OPS = {"triton": TRITON, "custom": CUSTOM}
# under the interpreter a triton_op's launches are skipped while traced: its checks stop short of aot_dispatch
UTILS = {"triton": ("test_schema", "test_autograd_registration", "test_faketensor"),
         "custom": ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")}


def check(y: torch.Tensor, x: torch.Tensor, scale: float) -> None:
    """y == scale * x, and backward gives scale * dy."""
    dy = torch.randn_like(y)
    assert torch.equal(y.detach(), x.detach() * scale)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert torch.equal(dx, dy * scale)


@pytest.mark.parametrize("kind", OPS)
def test_eager_runs_the_implementations_without_the_ops(kind, monkeypatch):
    op = OPS[kind]

    def dispatched(*args):
        raise AssertionError("an eager call on plain tensors went through the registered op")

    monkeypatch.setattr(op, "op", dispatched)
    x = torch.randn(5, 70, requires_grad=True)
    check(op(x, 2.0), x, 2.0)
    with torch.no_grad():
        assert torch.equal(op(x, 3.0), x.detach() * 3.0)


@pytest.mark.parametrize("kind", OPS)
def test_registered_ops_match_and_pass_opcheck(kind):
    op = OPS[kind]
    x = torch.randn(3, 40, requires_grad=True)
    check(op.op(x, 2.0), x, 2.0)
    torch.library.opcheck(op.op, (x, 2.0), test_utils=UTILS[kind])
    torch.library.opcheck(op.backward_op, (torch.randn(3, 40), 2.0), test_utils=UTILS[kind])


@pytest.mark.parametrize("kind", OPS)
def test_torch_compile_fullgraph(kind):
    """A triton_op is traced into its launches, which the interpreter skips while tracing: its compiled
    graph runs on the "eager" backend (the op itself); a custom_op is opaque and runs on aot_eager too."""
    op = OPS[kind]
    x = torch.randn(4, 33, requires_grad=True)
    backend = "eager" if kind == "triton" else "aot_eager"
    y = torch.compile(lambda t: op(t, 2.0), backend=backend, fullgraph=True)(x)
    check(y, x, 2.0)
