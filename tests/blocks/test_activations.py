"""The SmeLU module (any beta) and ``activation: smelu`` in a feedforward, against float64 references."""
import pytest
import torch
from helpers import TOL, rel_err

import blockzoo
from blockzoo.blocks import SmeLU

pytestmark = pytest.mark.filterwarnings("ignore::blockzoo.BlockzooFallbackWarning")


def smelu64(x: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.where(x >= beta, x, torch.where(x <= -beta, torch.zeros_like(x), (x + beta) ** 2 / (4 * beta)))


@pytest.mark.parametrize("beta", [0.25, 1.0, 2.0, 5.0])
def test_smelu_module_any_beta(beta):
    x = (torch.randn(4, 50) * 2 * beta).requires_grad_()
    y = SmeLU(beta)(x)
    xd = x.detach().double().requires_grad_()
    ref = smelu64(xd, beta)
    g = torch.randn(ref.shape, dtype=torch.float64)
    y.backward(g.float())
    ref.backward(g)
    assert rel_err(y.detach(), ref.detach()) <= TOL[torch.float32]
    assert rel_err(x.grad, xd.grad) <= TOL[torch.float32]


def test_smelu_default_beta_is_the_named_activation():
    x = torch.randn(3, 40) * 3
    assert SmeLU().beta == 2.0
    assert torch.allclose(SmeLU()(x), blockzoo.ops.dropout_bias_act(x, None, 0.0, "smelu"), atol=1e-6)
    with pytest.raises(ValueError, match="beta"):
        SmeLU(-1.0)


@pytest.mark.parametrize("name", ["mlp", "fused_mlp"])
def test_feedforward_with_smelu(name):
    ff = blockzoo.build("feedforward", name, dim_model=6, hidden_dim=10, activation="smelu")
    x = (torch.randn(2, 5, 6) * 3).requires_grad_()
    y = ff(x)
    w1, b1, w2, b2 = (p.detach().double().requires_grad_() for p in
                      (ff.fc1.weight, ff.fc1.bias, ff.fc2.weight, ff.fc2.bias))
    xd = x.detach().double().requires_grad_()
    ref = smelu64(xd @ w1.T + b1, 2.0) @ w2.T + b2
    g = torch.randn(ref.shape, dtype=torch.float64)
    y.backward(g.float())
    ref.backward(g)
    tol = 4 * TOL[torch.float32]
    assert rel_err(y.detach(), ref.detach()) <= tol
    assert rel_err(x.grad, xd.grad) <= tol and rel_err(ff.fc1.weight.grad, w1.grad) <= tol


def test_feedforward_config_refuses_a_misspelt_activation():
    with pytest.raises(blockzoo.ConfigError, match="did you mean .smelu"):
        blockzoo.build("feedforward", "mlp", dim_model=6, activation="smellu")
