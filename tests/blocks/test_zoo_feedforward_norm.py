"""Zoo parts: conv2d and MoE feedforwards, ScaleNorm, patch and ALiBi embeddings."""
import math

import pytest
import torch

import blockzoo
from blockzoo.blocks.aux_loss import auxiliary_losses

D = 8


def finite_backward(module, x):
    out = module(x)
    out.float().square().sum().backward()
    grads = [p.grad for p in module.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    return out


def lm(**parts):
    return blockzoo.build_model({"name": "decoder_lm", "dim_model": 16, "num_layers": 2, "num_heads": 2,
                                 "vocab_size": 11, "max_seq_len": 16, **parts})


def lm_batch(length=16):
    tokens = torch.randint(0, 11, (2, length))
    return {"tokens": tokens, "targets": tokens.roll(-1, 1)}


def assert_round_trip(model, inputs, tmp_path):
    again = blockzoo.load(blockzoo.save(model, tmp_path / "ckpt"))
    model.eval(), again.eval()
    assert torch.equal(model(inputs), again(inputs))


# -- conv2d -------------------------------------------------------------------------------------
def test_conv2d_mixes_exactly_the_3x3_grid_neighbourhood():
    ff = blockzoo.build("feedforward", "conv2d", dim_model=D).double()
    side = 5
    x = torch.randn(2, side * side, D, dtype=torch.float64)
    out = finite_backward(ff, x)
    assert out.shape == x.shape
    r, c = 1, 3
    moved = x.clone()
    moved[:, r * side + c] += 1.0  # row-major token (1, 3)
    changed = (ff(moved) - ff(x)).abs().amax(dim=(0, 2)) > 1e-12
    expect = torch.zeros(side, side, dtype=torch.bool)
    expect[r - 1:r + 2, c - 1:c + 2] = True
    assert torch.equal(changed.view(side, side), expect)


def test_conv2d_refuses_a_non_square_length_and_even_kernels():
    ff = blockzoo.build("feedforward", "conv2d", dim_model=D)
    with pytest.raises(ValueError, match="L=15 is not a perfect square"):
        ff(torch.randn(1, 15, D))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        blockzoo.build("feedforward", "conv2d", dim_model=D, kernel_size=4)


# -- MoE ----------------------------------------------------------------------------------------
def moe(**cfg):
    return blockzoo.build("feedforward", {"name": "moe", "dim_model": D, **cfg}).double()


def reference_moe(m, x):
    """Loop reference: top-k by router probability, slots filled rank by rank then token by token."""
    E, k = m.cfg.num_experts, m.cfg.top_k
    tokens = x.reshape(-1, D)
    probs = torch.softmax(m.router(tokens), -1)
    top_p, top_e = probs.topk(k, -1)
    gates = top_p / top_p.sum(-1, keepdim=True) if k > 1 else top_p
    cap, used = m.capacity(len(tokens)), [0] * E
    out = torch.zeros_like(tokens)
    for rank in range(k):
        for t in range(len(tokens)):
            e = int(top_e[t, rank])
            if used[e] < cap:
                used[e] += 1
                out[t] += gates[t, rank] * m.experts[e](tokens[t].view(1, 1, D)).view(D)
    return out.view_as(x), used


@pytest.mark.parametrize("top_k,capacity_factor", [(1, 0.5), (2, 0.6), (2, 2.0), (3, 1.0)])
def test_moe_matches_the_loop_reference_and_respects_capacity(top_k, capacity_factor):
    m = moe(num_experts=4, top_k=top_k, capacity_factor=capacity_factor)
    with torch.no_grad():
        m.router.weight.mul_(50)  # confident, unbalanced routing so capacity binds
    x = torch.randn(3, 10, D, dtype=torch.float64)
    seen = []
    for expert in m.experts:
        expert.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    out = m(x)
    processed = list(seen)  # rows each expert took in the forward (the reference calls them again)
    ref, used = reference_moe(m, x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert processed == used and max(processed) <= m.capacity(30)
    if capacity_factor < 1:
        assert sum(processed) < 30 * top_k  # some assignments were dropped


def test_moe_dropped_tokens_give_zero_and_pass_through_the_residual():
    block = blockzoo.build("block", "encoder", dim_model=D, num_heads=2, attention={"name": "scaled_dot_product"},
                           feedforward={"name": "moe", "num_experts": 2, "top_k": 1, "capacity_factor": 0.125},
                           norm={"name": "skip"}).double()
    x = torch.randn(2, 16, D, dtype=torch.float64)
    out = block(x)
    h = block.attn_res(x, block.self_attn)  # what the feedforward branch sees (norm = skip)
    expert = torch.softmax(block.feedforward.router(h.view(-1, D)), -1).argmax(-1)
    kept = torch.zeros(32, dtype=torch.bool)
    for e in range(2):  # capacity 2: the first two tokens routed to each expert
        kept[(expert == e).nonzero()[:2, 0]] = True
    assert block.feedforward.capacity(32) == 2
    moe_out = block.feedforward(h)
    assert torch.equal(moe_out.view(-1, D)[~kept], torch.zeros_like(moe_out.view(-1, D)[~kept]))
    assert (moe_out.view(-1, D)[kept].abs().sum(-1) > 0).all()
    assert torch.equal(out.view(-1, D)[~kept], h.view(-1, D)[~kept])  # unchanged by the feedforward branch


def test_moe_aux_loss_has_router_gradient_and_is_its_weight_when_balanced():
    m = moe(num_experts=4, top_k=2, aux_loss_weight=0.3)
    x = torch.randn(2, 8, D, dtype=torch.float64)
    finite_backward(m, x)
    m.zero_grad()
    m(x)
    m.aux_loss.backward()
    assert m.router.weight.grad.abs().sum() > 0
    with torch.no_grad():
        m.router.weight.zero_()  # uniform router probabilities
    m(x)
    assert m.aux_loss.item() == pytest.approx(0.3)


def test_moe_with_one_expert_and_top_1_is_the_expert():
    m = moe(num_experts=1, top_k=1, capacity_factor=1.0, expert={"name": "glu", "activation": "silu"})
    x = torch.randn(2, 7, D, dtype=torch.float64)
    assert torch.equal(m(x), m.experts[0](x))


def test_moe_runs_under_autocast():
    m = blockzoo.build("feedforward", {"name": "moe", "dim_model": D})
    x = torch.randn(2, 5, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == x.dtype and torch.isfinite(out).all()


def test_moe_config_errors():
    with pytest.raises(ValueError, match="top_k must be in"):
        moe(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor must be > 0"):
        moe(capacity_factor=0.0)
    with pytest.raises(ValueError, match="mixes neighbouring tokens"):
        moe(expert={"name": "conv2d"})


def test_models_add_the_aux_loss_in_training_only(tmp_path):
    model = lm(feedforward={"name": "moe", "num_experts": 3, "top_k": 2, "aux_loss_weight": 0.5})
    batch = lm_batch()
    loss = model.loss(batch)
    aux = auxiliary_losses(model)
    assert aux.item() > 0.5  # two MoE layers, each >= weight
    h = model.hidden(batch["tokens"])
    task = blockzoo.ops.fused_linear_cross_entropy(h.flatten(0, 1), model.head_weight, batch["targets"].flatten())
    torch.testing.assert_close(loss, task + aux)
    loss.backward()
    assert model.blocks[0].feedforward.router.weight.grad.abs().sum() > 0
    model.eval()
    assert auxiliary_losses(model).item() == 0.0
    assert_round_trip(model, batch["tokens"], tmp_path)


# -- ScaleNorm ----------------------------------------------------------------------------------
def test_scale_norm_value_init_and_grad():
    norm = blockzoo.build("norm", "scale_norm", dim=D)
    assert norm.scale.item() == pytest.approx(math.sqrt(D))
    with torch.no_grad():
        norm.scale.fill_(1.7)
    x = torch.randn(3, 5, D)
    out = finite_backward(norm, x)
    torch.testing.assert_close(out, 1.7 * x / x.norm(dim=-1, keepdim=True))
    assert norm(x.half()).dtype == torch.float16
    fixed = blockzoo.build("norm", "scale_norm", dim=D, affine=False)
    assert list(fixed.parameters()) == []
    torch.testing.assert_close(fixed(x).norm(dim=-1), torch.full((3, 5), math.sqrt(D)))


def test_scale_norm_in_a_model_round_trips(tmp_path):
    model = lm(norm={"name": "scale_norm"})
    model.loss(lm_batch()).backward()
    assert model.norm.scale.grad is not None
    assert_round_trip(model, lm_batch()["tokens"], tmp_path)


# -- patch embedding ----------------------------------------------------------------------------
def test_patch_embedding_layout_is_row_major():
    emb = blockzoo.build("embedding", "patch", dim_model=D, channels=2, image_size=8, patch_size=4).double()
    images = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    out = finite_backward(emb, images)
    assert out.shape == (3, 4, D)
    w, b = emb.proj.weight.flatten(1), emb.proj.bias
    for r in range(2):
        for c in range(2):
            patch = images[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].flatten(1)
            expect = patch @ w.t() + b + emb.position[2 * r + c]
            torch.testing.assert_close(out[:, 2 * r + c], expect)


def test_patch_embedding_errors_and_positionless_sizes():
    emb = blockzoo.build("embedding", "patch", dim_model=D, channels=3, image_size=8, patch_size=4)
    with pytest.raises(TypeError, match="float images"):
        emb(torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="expects images \\(B, 3, H, W\\)"):
        emb(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="not a multiple of patch_size=4"):
        emb(torch.randn(1, 3, 8, 10))
    with pytest.raises(ValueError, match="expects 8x8 images"):
        emb(torch.randn(1, 3, 12, 12))
    free = blockzoo.build("embedding", "patch", dim_model=D, channels=3, patch_size=4, positions=False)
    assert free(torch.randn(1, 3, 12, 8)).shape == (1, 6, D)


def test_patch_embedding_overlapping_patches_and_square_sequences():
    """stride and padding against a float64 unfold of the padded image; a (B, H·H, C) sequence is the same grid."""
    emb = blockzoo.build("embedding", "patch", dim_model=D, channels=3, patch_size=3, stride=2, padding=1,
                         positions=False, square_sequences=True).double()
    images = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    out = finite_backward(emb, images)
    cols = torch.nn.functional.unfold(torch.nn.functional.pad(images, (1, 1, 1, 1)), 3, stride=2)  # (B, C·9, 16)
    expect = cols.transpose(1, 2) @ emb.proj.weight.flatten(1).t() + emb.proj.bias
    assert out.shape == (2, 16, D)
    torch.testing.assert_close(out, expect)
    sequence = images.flatten(2).transpose(1, 2).contiguous()  # (2, 49, 3), row-major
    torch.testing.assert_close(emb(sequence), out)
    with pytest.raises(ValueError, match="length L=48 is not a square"):
        emb(sequence[:, :48])
    with pytest.raises(ValueError, match=r"sequences \(B, L, channels=3\)"):
        emb(torch.randn(2, 49, 4, dtype=torch.float64))
    plain = blockzoo.build("embedding", "patch", dim_model=D, channels=3, patch_size=4, positions=False)
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\), got \(2, 16, 3\)"):
        plain(torch.randn(2, 16, 3))  # sequences only with square_sequences


# -- ALiBi embedding ----------------------------------------------------------------------------
def test_alibi_embedding_with_alibi_attention_trains_and_extrapolates(tmp_path):
    cfg = blockzoo.compose(["embedding=alibi", "attention=alibi", "model.dim_model=16", "model.num_layers=2",
                            "model.num_heads=2", "model.vocab_size=11", "model.max_seq_len=16", "~task"])
    model = blockzoo.build_model(cfg)
    assert type(model.blocks[0].self_attn.attention).__name__ == "AlibiAttention"
    assert not any("position" in name for name, _ in model.named_parameters())
    emb = model.embedding(torch.full((1, 16), 3))
    assert torch.equal(emb[0, 0], emb[0, -1])  # no absolute position term
    model.loss(lm_batch()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert_round_trip(model, lm_batch()["tokens"], tmp_path)
    longer = blockzoo.build_model({**model.to_config(), "max_seq_len": 40})
    longer.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 11, (2, 40))
    model.eval(), longer.eval()
    torch.testing.assert_close(longer(tokens)[:, :16], model(tokens[:, :16]))  # causal: the prefix agrees
