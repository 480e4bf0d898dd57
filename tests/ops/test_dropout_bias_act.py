"""dropout_bias_act: the Triton path (interpreter) against torch_ref in float64, and its dropout mask."""
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import TOL, rel_err

import blockzoo
from blockzoo.ops import torch_ref
from blockzoo.ops.triton.dropout_bias_act import dropout_keep_mask

# numpy warns where exp overflows to inf inside sigmoid (gelu_tanh, silu): the intended result
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
OP = "dropout_bias_act"


def run_fast(x, bias, p, act, seed=None, training=True):
    with blockzoo.ops.force("triton"):
        y = blockzoo.ops.dropout_bias_act(x, bias, p, act, training=training, seed=seed)
    assert blockzoo.ops.last_path(OP) == "triton"
    return y


def check_fwd_bwd(x, bias, p, act, seed):
    """Forward and backward of the Triton path against float64 torch_ref with the same keep mask."""
    xs = x.detach().requires_grad_()
    bs = bias.detach().requires_grad_() if bias is not None else None
    y = run_fast(xs, bs, p, act, seed)
    keep = dropout_keep_mask(seed, x.shape, p) if p > 0 else None
    xd = x.detach().double().requires_grad_()
    bd = bias.detach().double().requires_grad_() if bias is not None else None
    ref = torch_ref.dropout_bias_act(xd, bd, p, act, True, keep)
    g = torch.randn(ref.shape, dtype=torch.float64)
    y.backward(g.to(y.dtype))
    ref.backward(g)
    tol = TOL[x.dtype] * 2
    assert y.dtype == x.dtype and y.shape == x.shape
    assert rel_err(y.detach(), ref.detach()) <= tol
    assert rel_err(xs.grad, xd.grad) <= tol
    if bias is not None:
        assert bs.grad.dtype == bias.dtype
        assert rel_err(bs.grad, bd.grad) <= tol


@pytest.mark.parametrize("act", torch_ref.ACTIVATIONS)
def test_every_activation_fp32(act):
    check_fwd_bwd(torch.randn(7, 333), torch.randn(333), 0.3, act, seed=11)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", ["gelu", "silu", "star_relu"])
def test_half_dtypes(dtype, act):
    check_fwd_bwd(torch.randn(5, 129, dtype=dtype), torch.randn(129, dtype=dtype), 0.2, act, seed=3)


@pytest.mark.parametrize("shape", [(1,), (1, 1), (1025,), (3, 1, 7), (2, 1025), (67, 9)])
def test_odd_shapes(shape):
    check_fwd_bwd(torch.randn(shape), torch.randn(shape[-1]), 0.25, "gelu_tanh", seed=5)


def test_no_bias_and_no_dropout():
    check_fwd_bwd(torch.randn(6, 70), None, 0.4, "silu", seed=9)
    check_fwd_bwd(torch.randn(6, 70), torch.randn(70), 0.0, "gelu", seed=None)


def test_non_contiguous_inputs():
    base = torch.randn(9, 40)
    check_fwd_bwd(base.t(), torch.randn(9), 0.3, "relu", seed=2)  # column stride 9: copied
    check_fwd_bwd(base[:, 3:36], torch.randn(33), 0.3, "gelu", seed=2)  # row stride 40: read in place
    wide = torch.randn(66)
    check_fwd_bwd(torch.randn(4, 33), wide[::2], 0.3, "leaky_relu", seed=2)  # strided bias


def test_expanded_grad_output():
    x, b = torch.randn(5, 48, requires_grad=True), torch.randn(48, requires_grad=True)
    run_fast(x, b, 0.5, "none", seed=4).sum().backward()  # dy is an expanded (stride 0) tensor
    keep = dropout_keep_mask(4, x.shape, 0.5)
    assert torch.equal(x.grad, keep.float() * 2.0)
    assert torch.allclose(b.grad, keep.float().sum(0) * 2.0)


def test_eval_and_p0_are_exact_activation():
    x, b = torch.randn(8, 100), torch.randn(100)
    for act in ("none", "relu", "leaky_relu"):  # exact in fp32: the same roundings as torch
        expect = torch_ref.activation(x + b, act)
        assert torch.equal(run_fast(x, b, 0.0, act), expect)
        assert torch.equal(run_fast(x, b, 0.7, act, training=False), expect)
    for act in ("gelu", "silu"):
        y0 = run_fast(x, b, 0.0, act)
        assert torch.equal(run_fast(x, b, 0.7, act, training=False), y0)
        assert rel_err(y0, torch_ref.activation(x.double() + b.double(), act)) <= TOL[torch.float32]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_binomial(p):
    shape = (32, 512)
    keep = dropout_keep_mask(1234, shape, p)
    n = keep.numel()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(keep.float().mean().item() - (1 - p)) <= 5 * sigma
    # each of the 8 columns that share one Philox draw keeps at the same rate, and rows differ
    per_slot = keep.view(32, 64, 8).float().mean((0, 1))
    assert (per_slot - (1 - p)).abs().max().item() <= 5 * sigma * math.sqrt(8)
    assert not torch.equal(keep[0], keep[1])


def _philox_bits(seed: int, counters: np.ndarray) -> list[np.ndarray]:
    """Philox4x32-10 of (counter lo, counter hi, 0, 0) with key (seed lo, seed hi), as Triton's randint4x."""
    mask = np.uint64(0xFFFFFFFF)
    c = [counters & mask, counters >> np.uint64(32), np.zeros_like(counters), np.zeros_like(counters)]
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    a, b = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    for _ in range(10):
        pa, pb = a * c[0], b * c[2]
        c = [(pb >> np.uint64(32)) ^ c[1] ^ k0, pb & mask, (pa >> np.uint64(32)) ^ c[3] ^ k1, pa & mask]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    return c


@pytest.mark.parametrize("seed", [0, 987654321, 2**40 + 17])
def test_mask_is_documented_philox_stream(seed):
    rows, n, p = 3, 21, 0.35
    r, col = np.meshgrid(np.arange(rows, dtype=np.uint64), np.arange(n, dtype=np.uint64), indexing="ij")
    words = _philox_bits(seed, r * np.uint64(math.ceil(n / 8)) + col // np.uint64(8))
    slot = (col % np.uint64(8)).astype(np.int64)
    word = np.choose(slot // 2, words)
    bits = (word >> (np.uint64(16) * (slot % 2).astype(np.uint64))) & np.uint64(0xFFFF)
    expect = torch.from_numpy(bits.astype(np.int64) >= round(p * 65536))
    assert torch.equal(dropout_keep_mask(seed, (rows, n), p), expect)


def test_seeds_and_mask_consistency():
    x, b = torch.randn(16, 96), torch.randn(96)
    y1, y2 = run_fast(x, b, 0.5, "gelu", seed=7), run_fast(x, b, 0.5, "gelu", seed=7)
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, run_fast(x, b, 0.5, "gelu", seed=8))
    assert torch.equal(dropout_keep_mask(7, x.shape, 0.5), dropout_keep_mask(7, x.shape, 0.5))
    assert not torch.equal(dropout_keep_mask(7, x.shape, 0.5), dropout_keep_mask(8, x.shape, 0.5))


def test_seed_none_follows_torch_generator_and_backward_reuses_mask():
    x = torch.randn(12, 64)
    torch.manual_seed(123)
    a = run_fast(x, None, 0.5, "none")
    torch.manual_seed(123)
    assert torch.equal(run_fast(x, None, 0.5, "none"), a)
    assert not torch.equal(run_fast(x, None, 0.5, "none"), a)  # the generator moved on
    xs = x.clone().requires_grad_()
    y = run_fast(xs, None, 0.5, "none")
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(xs.grad, g * (y != 0) * 2.0)  # backward regenerated the forward's mask


def test_bad_arguments():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="seed"):
        run_fast(x, None, 0.5, "gelu", seed=-1)
    with pytest.raises(ValueError, match="probability"):
        run_fast(x, None, 1.0, "gelu")
    with pytest.raises(ValueError, match="activation"):
        run_fast(x, None, 0.5, "gelu_erf")


def test_compiles_without_graph_break():
    x, b = torch.randn(6, 40, requires_grad=True), torch.randn(40, requires_grad=True)

    def f(x, b):
        return blockzoo.ops.dropout_bias_act(x, b, 0.3, "gelu", seed=21)

    with blockzoo.ops.force("triton"):
        y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, b)
        y.backward(torch.ones_like(y))
    assert torch.equal(y, run_fast(x, b, 0.3, "gelu", seed=21))
    assert x.grad is not None and b.grad is not None


def test_cpu_default_backend_warns_once_and_matches():
    x, b = torch.randn(5, 30), torch.randn(30)
    with pytest.warns(blockzoo.ops.BlockzooFallbackWarning):
        y = blockzoo.ops.dropout_bias_act(x, b, 0.5, "gelu", training=False)
    assert blockzoo.ops.last_path(OP) == "torch"
    assert torch.allclose(y, torch_ref.activation(x + b, "gelu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", blockzoo.ops.BlockzooFallbackWarning)
        blockzoo.ops.dropout_bias_act(x, b, 0.5, "gelu", training=False)


def _smelu_piecewise(x: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SmeLU and its derivative written zone by zone (an oracle independent of torch_ref.smelu)."""
    quad = (x + beta) ** 2 / (4 * beta)
    y = torch.where(x <= -beta, torch.zeros_like(x), torch.where(x < beta, quad, x))
    d = torch.where(x <= -beta, torch.zeros_like(x), torch.where(x < beta, (x + beta) / (2 * beta), torch.ones_like(x)))
    return y, d


@pytest.mark.parametrize("beta", [torch_ref.SMELU_BETA, 0.5, 3.0])
def test_smelu_reference_against_piecewise(beta):
    x = torch.cat([torch.randn(500, dtype=torch.float64) * 2 * beta,
                   torch.tensor([-beta, beta, 0.0, -2 * beta, 2 * beta], dtype=torch.float64)]).requires_grad_()
    y = torch_ref.smelu(x, beta)
    y.sum().backward()
    want, dwant = _smelu_piecewise(x.detach(), beta)
    assert torch.allclose(y.detach(), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(x.grad, dwant, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="beta"):
        torch_ref.smelu(x, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_smelu_kernel_every_zone(dtype):
    """The Triton smelu across its three zones and at the joins ±beta, forward and backward."""
    beta = torch_ref.SMELU_BETA
    x = torch.cat([torch.randn(3, 61) * 3, torch.linspace(-2.5 * beta, 2.5 * beta, 61)[None],
                   torch.tensor([-beta, beta, -beta, beta, 0.0] * 12 + [1.0])[None]]).to(dtype)
    check_fwd_bwd(x, torch.randn(61, dtype=dtype) * 0.1, 0.0, "smelu", seed=None)
    xs = x.float().detach().requires_grad_()
    y = run_fast(xs, None, 0.0, "smelu")
    y.backward(torch.ones_like(y))
    want, dwant = _smelu_piecewise(x.double(), beta)
    assert rel_err(y.detach(), want) <= TOL[torch.float32]
    assert rel_err(xs.grad, dwant) <= TOL[torch.float32]
