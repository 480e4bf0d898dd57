"""Every fast op on a CUDA GPU, forced to its fast path, against the float64 reference (``pytest -m gpu``).

Sizes a GPU runs in a blink but the CPU interpreter cannot: rows longer than one program holds (split
paths), thousand-token attention on every path. Each case runs twice, so the checked call re-launches
from the launch cache; outputs start as NaN (``poisoned_outputs``), so an unwritten element fails.
"""
import pytest
import torch

import blockzoo
from blockzoo.blocks.attention.local import LocalAttention, LocalConfig, window_mask
from blockzoo.ops import torch_ref

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ over b's finite entries; a (near) zero reference is compared absolutely, per element."""
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    finite = torch.isfinite(b)
    floor = 1e-3 * finite.sum().sqrt()
    return float((a[finite] - b[finite]).norm() / torch.maximum(b[finite].norm(), floor))


def check(fast, ref, inputs: list[torch.Tensor], dtype: torch.dtype, tol_scale: float = 1.0) -> None:
    """fast(*inputs) against ref(*inputs in float64), forward and the gradient of every float input."""
    xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    rs = [t.detach().double().clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    with blockzoo.ops.force("triton"):
        with torch.no_grad():  # the first call compiles and binds; the checked one re-launches from the cache
            fast(*[x.detach() for x in xs])
        out = fast(*xs)
    expect = ref(*rs)
    g = torch.randn_like(expect)
    out.backward(g.to(out.dtype))
    expect.backward(g)
    tol = TOL[dtype] * tol_scale
    assert rel(out, expect) <= tol, "forward"
    for i, (x, r) in enumerate(zip(xs, rs)):
        if r.grad is not None:
            assert x.grad is not None and rel(x.grad, r.grad) <= tol, f"gradient of input {i}"


def rnd(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", dtype=dtype)


@pytest.fixture(autouse=True)
def _cuda(poisoned_outputs):
    if not torch.cuda.is_available():
        pytest.skip("pytest -m gpu selected a CUDA test on a machine without a CUDA GPU")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 1), (64, 333), (16, 4097), (8, 70000), (4, 131072)])
@pytest.mark.parametrize("log", [False, True])
def test_softmax(shape, log, dtype):
    check(lambda x: blockzoo.ops.softmax(x, log=log), lambda x: torch_ref.softmax(x, log=log),
          [rnd(*shape, dtype=dtype)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_masks(dtype):
    keep = torch.rand(100, 257, device="cuda") < 0.5
    keep[3] = False  # a fully masked row
    check(lambda x: blockzoo.ops.softmax(x, mask=keep), lambda x: torch_ref.softmax(x, mask=keep),
          [rnd(2, 3, 100, 257, dtype=dtype)], dtype)
    check(lambda x: blockzoo.ops.softmax(x, causal=True), lambda x: torch_ref.softmax(x, causal=True),
          [rnd(2, 3, 129, 129, dtype=dtype)], dtype)
    add = torch.randn(100, 257, device="cuda")
    check(lambda x: blockzoo.ops.softmax(x, mask=add, causal=True),
          lambda x: torch_ref.softmax(x, mask=add, causal=True), [rnd(2, 100, 257, dtype=dtype)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(37, 1), (64, 333), (16, 4097), (8, 65536)])
def test_norms(shape, dtype):
    rows, n = shape
    w, b = rnd(n, dtype=dtype), rnd(n, dtype=dtype)
    check(lambda x, w, b: blockzoo.ops.layer_norm(x, (n,), w, b), lambda x, w, b: torch_ref.layer_norm(x, (n,), w, b),
          [rnd(rows, n, dtype=dtype), w, b], dtype, 2.0)
    check(lambda x, w: blockzoo.ops.rms_norm(x, (n,), w), lambda x, w: torch_ref.rms_norm(x, (n,), w),
          [rnd(rows, n, dtype=dtype), w], dtype, 2.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_non_contiguous_without_affine(dtype):
    check(lambda x: blockzoo.ops.layer_norm(x, (64,)), lambda x: torch_ref.layer_norm(x, (64,)),
          [rnd(64, 96, dtype=dtype).t()], dtype, 2.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", torch_ref.ACTIVATIONS)
def test_bias_activation(activation, dtype):
    check(lambda x, b: blockzoo.ops.dropout_bias_act(x, b, 0.0, activation),
          lambda x, b: torch_ref.dropout_bias_act(x, b, 0.0, activation),
          [rnd(333, 1025, dtype=dtype), rnd(1025, dtype=dtype)], dtype, 2.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "relu", "silu", "gelu_tanh"])
def test_linear_act(activation, dtype):
    check(lambda x, w, b: blockzoo.ops.linear_act(x, w, b, activation),
          lambda x, w, b: torch_ref.linear_act(x, w, b, activation),
          [rnd(333, 256, dtype=dtype), rnd(520, 256, dtype=dtype) * 0.06, rnd(520, dtype=dtype)], dtype, 3.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_linear_cross_entropy(dtype):
    target = torch.randint(0, 50304, (1000,), device="cuda")
    target[::7] = -100
    check(blockzoo.ops.fused_linear_cross_entropy, torch_ref.fused_linear_cross_entropy,
          [rnd(1000, 768, dtype=dtype), rnd(50304, 768, dtype=dtype) * 0.03, target], dtype, 3.0)


def test_dropout_keep_rate_and_determinism():
    x = torch.randn(4096, 1024, device="cuda")
    with blockzoo.ops.force("triton"):
        y = blockzoo.ops.dropout_bias_act(x, None, 0.25, "none", seed=123)
        again = blockzoo.ops.dropout_bias_act(x, None, 0.25, "none", seed=123)
    assert abs((y != 0).float().mean().item() - 0.75) < 0.005
    assert torch.equal(y, again)
    torch.testing.assert_close(y[y != 0], (x / 0.75)[y != 0])


L = 1000
MASKS = {"random 1%": lambda: torch.rand(L, L, device="cuda") < 0.01,
         "random 30%": lambda: torch.rand(L, L, device="cuda") < 0.3,
         "band 64": lambda: window_mask(L, L, 64, "cuda"),
         "blocks 10%": lambda: (torch.rand(8, 8, device="cuda") < 0.1).repeat_interleave(128, 0)
         .repeat_interleave(128, 1)[:L, :L]}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", [p for p in blockzoo.ops.attention.PATHS if p != "flash"])
@pytest.mark.parametrize("mask_name", MASKS)
def test_masked_attention_paths(mask_name, path, dtype):
    mask = MASKS[mask_name]()
    mask[5] = False  # a fully masked row
    q, k, v = (rnd(2, 4, L, 64, dtype=dtype) for _ in range(3))
    check(lambda q, k, v: blockzoo.ops.masked_attention(q, k, v, mask, path=path),
          lambda q, k, v: torch_ref.attention(q, k, v, mask), [q, k, v], dtype, 3.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_local_attention_component(causal, dtype):
    local = LocalAttention(LocalConfig(name="local", window_size=129))
    window = window_mask(L, L, 129, "cuda")
    q, k, v = (rnd(2, 4, L, 64, dtype=dtype) for _ in range(3))
    check(lambda q, k, v: local(q, k, v, causal=causal),
          lambda q, k, v: torch_ref.attention(q, k, v, window, causal=causal), [q, k, v], dtype, 3.0)
