"""The MoE feedforward's round-robin gate: forward and backward against a float64 loop over tokens (token i
through expert i mod E, written out from the experts' weights), no router, no aux loss, configs and a model."""
import pytest
import torch
import torch.nn.functional as F
from helpers import TOL, rel_err

import blockzoo
from blockzoo.blocks.aux_loss import auxiliary_losses
from blockzoo.config import ConfigError

D = 8


def build(**fields):
    return blockzoo.build("feedforward", "moe", gate="round_robin", dim_model=D, **fields)


def reference(moe, x):
    """Token by token, in float64: the MLP expert i % E applied to token i (tanh-free GELU, as the experts')."""
    tokens = x.double().reshape(-1, D)
    rows = []
    for i, t in enumerate(tokens):
        ex = moe.experts[i % moe.cfg.num_experts]
        w1, b1, w2, b2 = (p.double() for p in (ex.fc1.weight, ex.fc1.bias, ex.fc2.weight, ex.fc2.bias))
        rows.append(w2 @ F.gelu(w1 @ t + b1) + b2)
    return torch.stack(rows).reshape(x.shape)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("experts, shape", [(4, (2, 6, D)), (3, (1, 7, D)), (5, (2, 2, D)), (1, (3, 1, D))])
def test_forward_backward_against_a_token_loop(experts, shape, dtype):
    moe = build(num_experts=experts).to(dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    out = moe(x)
    assert out.shape == x.shape and out.dtype == dtype
    ref_moe = build(num_experts=experts).double()
    ref_moe.load_state_dict(moe.state_dict())
    x64 = x.detach().double().requires_grad_()
    ref = reference(ref_moe, x64)
    assert rel_err(out.detach(), ref.detach()) < 4 * TOL[dtype]
    grad = torch.randn(shape, dtype=torch.float64)
    ref.backward(grad)
    out.backward(grad.to(dtype))
    assert rel_err(x.grad, x64.grad) < 8 * TOL[dtype]
    for p, p64 in zip(moe.parameters(), ref_moe.parameters()):
        if p64.grad is None:  # an expert no token reached
            assert p.grad is None or not p.grad.any()
        else:
            assert rel_err(p.grad, p64.grad) < 8 * TOL[dtype]


def test_no_router_and_no_aux_loss():
    moe = build()
    assert moe.router is None
    assert not any("router" in name for name, _ in moe.named_parameters())
    moe.train()(torch.randn(2, 8, D))
    assert moe.aux_loss is None and auxiliary_losses(moe) == 0


def test_each_token_goes_to_its_expert_only():
    """Zeroing expert e's output weights zeroes exactly the tokens i with i % E == e."""
    moe = build(num_experts=3).double()
    with torch.no_grad():
        moe.experts[1].fc2.weight.zero_()
        moe.experts[1].fc2.bias.zero_()
    out = moe(torch.randn(2, 5, D, dtype=torch.float64)).reshape(-1, D)
    zero = (out == 0).all(-1)
    assert torch.equal(zero, torch.arange(10) % 3 == 1)


def test_gate_is_checked_with_its_path():
    with pytest.raises(ConfigError, match=r"feedforward\.gate='round-robin'.*did you mean 'round_robin'"):
        blockzoo.build("feedforward", "moe", gate="round-robin", dim_model=D)
    with pytest.raises(ConfigError, match=r"feedforward\.gate"):
        blockzoo.build_model(blockzoo.compose(["feedforward=moe", "feedforward.gate=rr", "model=tiny_lm", "~task",
                                               "model.vocab_size=16"]))


def test_preset_trains_and_reloads_in_a_model(tmp_path):
    cfg = blockzoo.compose(["feedforward=moe_round_robin", "model=tiny_lm", "~task", "model.vocab_size=16",
                            "model.dim_model=16", "model.num_layers=2", "model.max_seq_len=16"])
    assert cfg.feedforward.gate == "round_robin"
    model = blockzoo.build_model(cfg)
    tokens = torch.randint(0, 16, (2, 16))
    loss = model.loss({"tokens": tokens, "targets": tokens.roll(-1, 1)})
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    again = blockzoo.load(blockzoo.save(model, tmp_path / "ckpt")).eval()
    assert torch.equal(model(tokens), again(tokens))
