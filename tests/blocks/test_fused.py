"""FusedLinear and FusedDropoutBias against float64 references written with plain PyTorch, both paths."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import TOL, rel_err

import blockzoo
from blockzoo.blocks import FusedDropoutBias, FusedLinear

pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::blockzoo.BlockzooFallbackWarning")]
BACKENDS = ["torch", "triton"]

ACT64 = {  # float64 references written here, independent of torch_ref
    "none": lambda z: z,
    "relu": lambda z: z.clamp(min=0),
    "gelu": lambda z: 0.5 * z * (1 + torch.erf(z / 2**0.5)),
    "smelu": lambda z: torch.where(z >= 2, z, torch.where(z <= -2, torch.zeros_like(z), (z + 2) ** 2 / 8)),
}


def leaf64(t):
    return None if t is None else t.detach().double().requires_grad_()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", list(ACT64))
@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_matches_float64(backend, act, bias):
    layer = FusedLinear(19, 23, bias=bias, activation=act)
    x = (torch.randn(2, 5, 19) * 3).requires_grad_()
    with blockzoo.ops.force(backend):
        y = layer(x)
    xd, wd, bd = leaf64(x), leaf64(layer.weight), leaf64(layer.bias)
    ref = ACT64[act](xd @ wd.T + (bd if bias else 0.0))
    g = torch.randn(ref.shape, dtype=torch.float64)
    y.backward(g.float())
    ref.backward(g)
    tol = 4 * TOL[torch.float32]
    assert y.shape == (2, 5, 23) and rel_err(y.detach(), ref.detach()) <= tol
    assert rel_err(x.grad, xd.grad) <= tol and rel_err(layer.weight.grad, wd.grad) <= tol
    if bias:
        assert rel_err(layer.bias.grad, bd.grad) <= tol
    else:
        assert layer.bias is None


def test_fused_linear_state_dict_and_nn_linear_parity():
    layer = FusedLinear(8, 6)
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert set(FusedLinear(8, 6, bias=False).state_dict()) == {"weight"}
    linear = torch.nn.Linear(8, 6)
    layer.load_state_dict(linear.state_dict())
    x = torch.randn(3, 8)
    assert torch.allclose(layer(x), linear(x), atol=1e-6)
    bound = 1 / 8**0.5  # nn.Linear's initial range
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound and layer.weight.std() > bound / 4


def test_fused_linear_bad_arguments():
    with pytest.raises(ValueError, match="in_features"):
        FusedLinear(0, 4)
    with pytest.raises(ValueError, match="out_features"):
        FusedLinear(4, 2.5)
    with pytest.raises(ValueError, match="did you mean 'smelu'"):
        FusedLinear(4, 4, activation="smeLu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ["none", "gelu", "smelu"])
def test_fused_dropout_bias_eval_matches_float64(backend, act):
    layer = FusedDropoutBias(0.4, 33, act).eval()
    with torch.no_grad():
        layer.bias.normal_()
    x = (torch.randn(4, 7, 33) * 3).requires_grad_()
    with blockzoo.ops.force(backend):
        y = layer(x)
    xd, bd = leaf64(x), leaf64(layer.bias)
    ref = ACT64[act](xd + bd)
    g = torch.randn(ref.shape, dtype=torch.float64)
    y.backward(g.float())
    ref.backward(g)
    tol = 2 * TOL[torch.float32]
    assert rel_err(y.detach(), ref.detach()) <= tol
    assert rel_err(x.grad, xd.grad) <= tol and rel_err(layer.bias.grad, bd.grad) <= tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_dropout_bias_training_drops_and_scales(backend):
    p = 0.3
    layer = FusedDropoutBias(p, 65, "gelu").train()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(6, 65).requires_grad_()
    with blockzoo.ops.force(backend):
        y = layer(x)
    keep = y.detach() != 0  # gelu(z) is nonzero for every z drawn here
    xd, bd = leaf64(x), leaf64(layer.bias)
    ref = ACT64["gelu"](xd + bd) * keep / (1 - p)
    g = torch.randn(ref.shape, dtype=torch.float64)
    y.backward(g.float())
    ref.backward(g)
    assert 0.5 < keep.float().mean().item() < 0.9
    tol = 2 * TOL[torch.float32]
    assert rel_err(y.detach(), ref.detach()) <= tol
    assert rel_err(x.grad, xd.grad) <= tol and rel_err(layer.bias.grad, bd.grad) <= tol


def test_fused_dropout_bias_parameters_and_arguments():
    layer = FusedDropoutBias(0.1, 12, "relu")
    assert [n for n, _ in layer.named_parameters()] == ["bias"] and torch.equal(layer.bias, torch.zeros(12))
    assert set(layer.state_dict()) == {"bias"}
    assert list(FusedDropoutBias(0.1).parameters()) == []
    with pytest.raises(ValueError, match="p must be"):
        FusedDropoutBias(1.0, 4)
    with pytest.raises(ValueError, match="bias_shape"):
        FusedDropoutBias(0.1, 0)
    with pytest.raises(ValueError, match="unknown activation"):
        FusedDropoutBias(0.1, 4, "swish")
    with pytest.raises(ValueError, match="bias has 12 elements"):
        layer(torch.randn(2, 5))


def test_exported_from_blockzoo():
    assert blockzoo.FusedLinear is FusedLinear and blockzoo.FusedDropoutBias is FusedDropoutBias
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(repr(FusedLinear(2, 3, activation="smelu")), str)
