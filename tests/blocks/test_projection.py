"""InputProjection and EmbeddingProjection against float64 matmuls."""
import pytest
import torch
from helpers import TOL, rel_err

from blockzoo.blocks import EmbeddingProjection, InputProjection


def test_input_projection_distinct_inputs_and_widths():
    proj = InputProjection(12, dim_key=8, dim_value=20, dim_key_input=6, dim_value_input=10, bias=(True, False, True))
    query, key, value = torch.randn(2, 5, 12), torch.randn(2, 7, 6), torch.randn(2, 7, 10)
    for t in (query, key, value):
        t.requires_grad_()
    q, k, v = proj(query, key, value)
    params = dict(proj.named_parameters())
    assert set(params) == {"q_proj.weight", "q_proj.bias", "k_proj.weight", "v_proj.weight", "v_proj.bias"}
    d = {n: p.detach().double().requires_grad_() for n, p in params.items()}
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (query, key, value))
    ref = (qd @ d["q_proj.weight"].T + d["q_proj.bias"], kd @ d["k_proj.weight"].T,
           vd @ d["v_proj.weight"].T + d["v_proj.bias"])
    grads = [torch.randn(r.shape, dtype=torch.float64) for r in ref]
    torch.autograd.backward([q, k, v], [g.float() for g in grads])
    torch.autograd.backward(list(ref), grads)
    tol = 2 * TOL[torch.float32]
    assert [o.shape for o in (q, k, v)] == [(2, 5, 8), (2, 7, 8), (2, 7, 20)]
    for got, want in zip((q, k, v), ref):
        assert rel_err(got.detach(), want.detach()) <= tol
    for got, want in ((query.grad, qd.grad), (key.grad, kd.grad), (value.grad, vd.grad)):
        assert rel_err(got, want) <= tol
    for name, p in params.items():
        assert rel_err(p.grad, d[name].grad) <= tol, name


def test_input_projection_defaults_and_shared_weight():
    proj = InputProjection(6, shared_weight=True)
    x = torch.randn(3, 4, 6)
    q, k, v = proj(x)  # key defaults to the query, value to the key
    w = proj.q_proj.weight
    assert proj.k_proj.weight is w and proj.v_proj.weight is w
    assert torch.allclose(k - proj.k_proj.bias, q - proj.q_proj.bias, atol=1e-6)
    y = torch.randn(3, 2, 6)
    _, k2, v2 = proj(x, y)
    assert torch.allclose(v2, y @ w.T + proj.v_proj.bias, atol=1e-6) and k2.shape == (3, 2, 6)
    assert len(list(proj.parameters())) == 4  # one weight, three biases


def test_input_projection_bad_arguments():
    with pytest.raises(ValueError, match="dim_key must"):
        InputProjection(8, dim_key=0)
    with pytest.raises(ValueError, match="shared_weight"):
        InputProjection(8, dim_value=4, shared_weight=True)
    with pytest.raises(TypeError, match="bias"):
        InputProjection(8, bias=(True, False))


def test_embedding_projection():
    proj = EmbeddingProjection(5, 9)
    x = torch.randn(2, 3, 5, requires_grad=True)
    y = proj(x)
    ref = x.detach().double() @ proj.weight.detach().double().T + proj.bias.detach().double()
    assert y.shape == (2, 3, 9) and rel_err(y.detach(), ref) <= TOL[torch.float32]
    assert set(proj.state_dict()) == {"weight", "bias"}
    assert isinstance(EmbeddingProjection.between(7, 7), torch.nn.Identity)
    assert isinstance(EmbeddingProjection.between(7, 8, bias=False), EmbeddingProjection)
    with pytest.raises(ValueError, match="dim_embedding"):
        EmbeddingProjection(0, 4)
