"""Every registered component builds from compose() and trains a step (parametrized over the registry itself)."""
import pytest
import torch

import blockzoo
from blockzoo.blocks.embedding.token import TokenEmbedding

L = 16  # a square grid (4x4) and the model's max_seq_len, so every mechanism can run
VOCAB = 13
TINY = ["model.dim_model=32", "model.num_layers=2", "model.num_heads=4", f"model.vocab_size={VOCAB}",
        f"model.max_seq_len={L}", "~task"]


def entry(kind, name):
    return blockzoo.registry(kind).get(name)


def model_overrides_for(attention_cls) -> list[str]:
    """A decoder LM when the mechanism can be causal, else an encoder classifier."""
    if getattr(attention_cls, "supports_causal", True):
        return ["model=tiny_lm"]
    return ["model=encoder_classifier", "model.num_classes=3"]


def train_step(model, batch):
    model.train()
    loss = model.loss(batch)
    assert torch.isfinite(loss), loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None for g in grads)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    return loss


def batch_for(model):
    tokens = torch.randint(0, VOCAB, (2, L))
    batch = {"tokens": tokens, "targets": torch.roll(tokens, -1, 1), "label": torch.tensor([0, 2])}
    return batch


def compose_model(overrides):
    return blockzoo.build_model(blockzoo.compose([*overrides, *TINY]))


@pytest.mark.parametrize("name", blockzoo.registry("attention").names())
def test_every_attention_trains_in_a_model(name):
    cls = entry("attention", name).cls
    model = compose_model([*model_overrides_for(cls), f"attention={name}"])
    train_step(model, batch_for(model))


@pytest.mark.parametrize("name", blockzoo.registry("feedforward").names())
def test_every_feedforward_trains_in_a_model(name):
    model = compose_model([f"feedforward={name}"])
    train_step(model, batch_for(model))


@pytest.mark.parametrize("name", blockzoo.registry("norm").names())
def test_every_norm_trains_in_a_model(name):
    model = compose_model([f"norm={name}"])
    train_step(model, batch_for(model))


TOKEN_EMBEDDINGS = [n for n in blockzoo.registry("embedding").names()
                    if issubclass(entry("embedding", n).cls, TokenEmbedding)]


@pytest.mark.parametrize("name", TOKEN_EMBEDDINGS)
def test_every_token_embedding_trains_in_a_model(name):
    model = compose_model([f"embedding={name}"])
    train_step(model, batch_for(model))


def test_non_token_embeddings_are_known():
    """Embeddings that take images instead of tokens are tested with the image models."""
    others = set(blockzoo.registry("embedding").names()) - set(TOKEN_EMBEDDINGS)
    assert others <= {"patch"}, others


@pytest.mark.parametrize("name", blockzoo.registry("block").names())
def test_every_block_runs(name):
    block = blockzoo.build("block", name, dim_model=32, num_heads=4, attention={"name": "scaled_dot_product"},
                           feedforward={"name": "mlp"}, norm={"name": "layer_norm"})
    x = torch.randn(2, L, 32, requires_grad=True)
    memory = torch.randn(2, 5, 32) if block.has_cross else None
    out = block(x, memory=memory)
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("residual", ["pre", "post", "deepnorm"])
@pytest.mark.parametrize("init", ["default", "small", "vit", "timm", "moco", "deepnorm"])
def test_residual_layouts_and_inits(residual, init):
    model = compose_model([f"model.residual={residual}", f"model.init={init}"])
    train_step(model, batch_for(model))
