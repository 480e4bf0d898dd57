"""SimplicialEmbedding against a float64 softmax written group by group."""
import pytest
import torch
from helpers import TOL, rel_err

from blockzoo.blocks import SimplicialEmbedding

pytestmark = pytest.mark.filterwarnings("ignore::blockzoo.BlockzooFallbackWarning")


def reference(x: torch.Tensor, L: int, temperature: float | None) -> torch.Tensor:
    size = x.shape[-1] // L
    parts = []
    for g in range(L):
        z = x[..., g * size:(g + 1) * size] / (temperature or 1.0)
        e = (z - z.amax(-1, keepdim=True)).exp()
        parts.append(e / e.sum(-1, keepdim=True))
    return torch.cat(parts, -1)


@pytest.mark.parametrize("shape, L, temperature", [((2, 5, 12), 3, None), ((4, 10), 5, 0.3), ((2, 3, 2, 7), 1, 2.0),
                                                   ((3, 6, 8), 8, 1.5)])
def test_matches_float64_reference(shape, L, temperature):
    x = (torch.randn(shape) * 2).requires_grad_()
    before = x.detach().clone()
    y = SimplicialEmbedding(L, temperature)(x)
    xd = x.detach().double().requires_grad_()
    ref = reference(xd, L, temperature)
    g = torch.randn(ref.shape, dtype=torch.float64)
    y.backward(g.float())
    ref.backward(g)
    assert torch.equal(x.detach(), before)  # the input is not scaled in place
    assert y.shape == x.shape and rel_err(y.detach(), ref.detach()) <= 2 * TOL[torch.float32]
    assert rel_err(x.grad, xd.grad) <= 4 * TOL[torch.float32]
    sums = y.detach().reshape(*shape[:-1], L, -1).sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


def test_low_temperature_approaches_one_hot():
    x = torch.randn(3, 16)
    y = SimplicialEmbedding(4, 1e-3)(x).reshape(3, 4, 4)
    assert torch.allclose(y.amax(-1), torch.ones(3, 4), atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="L must"):
        SimplicialEmbedding(0)
    with pytest.raises(ValueError, match="temperature"):
        SimplicialEmbedding(2, temperature=0.0)
    with pytest.raises(ValueError, match="divisible by L=3"):
        SimplicialEmbedding(3)(torch.randn(2, 8))
