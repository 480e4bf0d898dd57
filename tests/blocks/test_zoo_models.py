"""Zoo models: the reversible LM, the hierarchical image classifier and the synthetic image task."""
import pytest
import torch

import blockzoo
from blockzoo.blocks.aux_loss import auxiliary_losses
from blockzoo.tasks.images import Images, ImagesConfig

REV = dict(name="reversible_lm", dim_model=16, num_heads=2, vocab_size=11, max_seq_len=12)


def lm_batch(length=12):
    tokens = torch.randint(0, 11, (2, length))
    return {"tokens": tokens, "targets": tokens.roll(-1, 1)}


def saved_activation_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``model.loss``, weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model.loss(batch)
    loss.backward()
    return sum(saved.values())


# -- reversible ---------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [
    {},
    {"dropout": 0.1, "attention": {"name": "scaled_dot_product", "dropout": 0.2}},  # dropout replayed in backward
    {"feedforward": {"name": "moe", "num_experts": 3, "top_k": 2, "capacity_factor": 0.7, "aux_loss_weight": 0.5}},
], ids=["plain", "dropout", "moe"])
def test_reversible_gradients_equal_the_ordinary_stack(extra):
    rev = blockzoo.build_model({**REV, "num_layers": 3, **extra}).double()
    ref = blockzoo.build_model({**REV, "num_layers": 3, **extra, "reversible": False}).double()
    ref.load_state_dict(rev.state_dict())
    batch = lm_batch()
    losses = []
    for model in (rev, ref):
        torch.manual_seed(1)
        loss = model.loss(batch)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-12)
    if "feedforward" in extra:
        assert auxiliary_losses(rev).requires_grad and auxiliary_losses(rev).item() > 0
    grads = dict(ref.named_parameters())
    for name, p in rev.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=0, atol=1e-10, msg=name)


def test_reversible_backward_recomputes_under_the_forward_autocast():
    rev = blockzoo.build_model({**REV, "num_layers": 3})
    ref = blockzoo.build_model({**REV, "num_layers": 3, "reversible": False})
    ref.load_state_dict(rev.state_dict())
    batch = lm_batch()
    for model in (rev, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model.loss(batch)
        loss.backward()
    grads = dict(ref.named_parameters())
    for name, p in rev.named_parameters():  # recomputing in float32 instead would be off by ~1e-2
        assert (p.grad - grads[name].grad).norm() <= 1e-5 * grads[name].grad.norm(), name


def test_reversible_activation_memory_is_independent_of_depth():
    batch = lm_batch()
    rev = [saved_activation_bytes(blockzoo.build_model({**REV, "num_layers": n}), batch) for n in (2, 8)]
    plain = [saved_activation_bytes(blockzoo.build_model({**REV, "num_layers": n, "reversible": False}), batch)
             for n in (2, 8)]
    assert rev[0] == rev[1]
    assert plain[1] > 3 * plain[0] > 3 * rev[0]  # the measurement sees per-block activations when they are kept


def test_reversible_lm_inference_generation_and_round_trip(tmp_path):
    model = blockzoo.build_model({**REV, "num_layers": 2})
    tokens = lm_batch()["tokens"]
    with_grad = model(tokens)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), with_grad)
    assert model.generate(tokens[:, :4], 3, temperature=0).shape == (2, 7)
    again = blockzoo.load(blockzoo.save(model, tmp_path / "ckpt"))
    assert torch.equal(again(tokens), with_grad)


def test_reversible_needs_pre_norm_and_builds_from_its_preset():
    with pytest.raises(ValueError, match="residual='pre'"):
        blockzoo.build_model({**REV, "num_layers": 2, "residual": "post"})
    cfg = blockzoo.compose(["model=reversible_lm", "model.vocab_size=11", "model.dim_model=16", "model.num_heads=2",
                            "~task"])
    model = blockzoo.build_model(cfg)
    assert type(model).__name__ == "ReversibleLM" and model.cfg.reversible
    model.loss(lm_batch()).backward()


# -- hierarchical and the images task -----------------------------------------------------------
SMALL = dict(name="hierarchical", image_size=16, num_classes=4, stage_dims=[16, 32], stage_depths=[1, 1],
             stage_heads=[2, 2])


def test_images_task_is_deterministic_and_well_formed():
    task = Images(ImagesConfig(name="images", image_size=16, channels=2, num_classes=3, seed=5))
    a, b = task.batch("train", 3, 8), task.batch("train", 3, 8)
    assert a["images"].shape == (8, 2, 16, 16) and a["images"].dtype == torch.float32
    assert a["label"].dtype == torch.int64 and 0 <= a["label"].min() and a["label"].max() < 3
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["images"], task.batch("val", 3, 8)["images"])
    assert not torch.equal(a["images"], task.batch("train", 4, 8)["images"])
    assert task.num_classes == 3 and task.vocab_size == 0
    with pytest.raises(ValueError, match="num_classes >= 2"):
        Images(ImagesConfig(name="images", num_classes=1))


def test_images_class_is_the_bar_orientation():
    """Without noise, a bar of class c is invariant to moving along angle c·π/K (one-pixel shifts)."""
    task = Images(ImagesConfig(name="images", image_size=32, channels=1, num_classes=2, noise=0.0))
    batch = task.batch("train", 0, 64)
    img, label = batch["images"][:, 0], batch["label"]
    horizontal = (img[:, 8:24, 9:25] - img[:, 8:24, 8:24]).abs().mean((1, 2))  # class 0: angle 0
    vertical = (img[:, 9:25, 8:24] - img[:, 8:24, 8:24]).abs().mean((1, 2))  # class 1: angle π/2
    assert (horizontal[label == 0] < vertical[label == 0]).float().mean() > 0.9
    assert (vertical[label == 1] < horizontal[label == 1]).float().mean() > 0.9


def test_hierarchical_trains_on_images_with_falling_loss():
    torch.manual_seed(0)
    task = Images(ImagesConfig(name="images", image_size=16, num_classes=4, noise=0.2))
    model = blockzoo.build_model(SMALL)
    assert type(model.stages[0][0].self_attn.attention).__name__ == "Pooling"  # PoolFormer by default
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    val = task.batch("val", 0, 64)
    with torch.no_grad():
        before = model.loss(val).item()
    for step in range(30):
        loss = model.loss(task.batch("train", step, 16))
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    with torch.no_grad():
        after = model.loss(val).item()
    assert after < before - 0.15, (before, after)  # chance level is ln 4 = 1.386
    predicted, label = model.predictions(val)
    assert predicted.shape == label.shape == (64,)


def test_hierarchical_stage_shapes_and_errors():
    model = blockzoo.build_model({**SMALL, "stage_dims": [8, 16, 24], "stage_depths": [1, 0, 1],
                                  "stage_heads": [1, 2, 3], "image_size": 32})
    assert [s[0].self_attn.attention.cfg.max_seq_len for s in model.stages if len(s)] == [64, 4]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="must divide into patch_size=4"):
        blockzoo.build_model({**SMALL, "image_size": 24, "stage_dims": [8, 8, 8], "stage_depths": [1, 1, 1],
                              "stage_heads": [1, 1, 1]})
    with pytest.raises(ValueError, match="needs an image embedding"):
        blockzoo.build_model({**SMALL, "embedding": {"name": "vocab"}})
    with pytest.raises(ValueError, match="equal length"):
        blockzoo.build_model({**SMALL, "stage_heads": [2]})
    with pytest.raises(ValueError, match="needs batch keys"):
        model.loss({"tokens": torch.zeros(2, 4, dtype=torch.long), "label": torch.zeros(2, dtype=torch.long)})


@pytest.mark.parametrize("overrides", [
    ["attention=pooling_2d", "feedforward=conv2d"],
    ["attention=visual", "feedforward=moe", "norm=scale_norm"],
], ids=["poolformer-conv2d", "visual-moe-scalenorm"])
def test_hierarchical_preset_with_zoo_parts_round_trips(overrides, tmp_path):
    # task=images is registered by this module's `blockzoo.tasks.images` import
    cfg = blockzoo.compose(["model=hierarchical", "task=images", "task.image_size=16", "model.stage_dims=[8,16]",
                            "model.stage_depths=[1,1]", "model.stage_heads=[1,2]", *overrides])
    task = Images(ImagesConfig(**cfg.task))
    model = blockzoo.build_model(cfg)
    assert model.cfg.num_classes == task.num_classes and model.cfg.image_size == 16
    batch = task.batch("train", 0, 4)
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    again = blockzoo.load(blockzoo.save(model, tmp_path / "ckpt"))
    model.eval(), again.eval()
    assert torch.equal(model(batch["images"]), again(batch["images"]))
