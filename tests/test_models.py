"""Models: save/load round trip, tied embeddings, parameter counts, padding, encoder-decoder, deepnorm."""
import pytest
import torch

import blockzoo
from blockzoo.blocks.block import deepnorm_constants

TINY = dict(dim_model=32, num_layers=2, num_heads=4, vocab_size=19, max_seq_len=16)


def test_save_load_is_bit_exact(tmp_path):
    model = blockzoo.build_model({"name": "decoder_lm", **TINY, "attention": {"name": "local", "window_size": 4},
                                  "embedding": {"name": "rotary"}, "norm": {"name": "rms_norm"}})
    folder = blockzoo.save(model, tmp_path / "ckpt")
    again = blockzoo.load(folder)
    tokens = torch.randint(0, 19, (3, 16))
    model.eval(), again.eval()
    assert torch.equal(model(tokens), again(tokens))
    assert again.head_weight.data_ptr() == again.embedding.token.weight.data_ptr()  # still tied


def test_save_is_atomic_and_replaces(tmp_path):
    model = blockzoo.build_model({"name": "decoder_lm", **TINY})
    blockzoo.save(model, tmp_path / "ckpt")
    with torch.no_grad():
        model.embedding.token.weight.add_(1.0)
    blockzoo.save(model, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert torch.equal(blockzoo.load(tmp_path / "ckpt").embedding.token.weight, model.embedding.token.weight)


def test_load_rejects_non_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a blockzoo checkpoint"):
        blockzoo.load(tmp_path)


def gpt2_small_params(vocab=50304, ctx=1024, d=768, layers=12):
    per_layer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + ctx * d + layers * per_layer + 2 * d


def test_gpt_small_preset_matches_plain_gpt2_parameter_count():
    cfg = blockzoo.compose(["model=gpt_small", "~task"])
    with torch.device("meta"):
        model = blockzoo.build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == gpt2_small_params()


def test_untied_head_adds_parameters():
    tied = blockzoo.build_model({"name": "decoder_lm", **TINY})
    untied = blockzoo.build_model({"name": "decoder_lm", **TINY, "tie_embeddings": False})
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == 19 * 32


def test_classifier_ignores_padding():
    model = blockzoo.build_model({"name": "encoder_classifier", **TINY, "num_classes": 3}).eval()
    tokens = torch.randint(1, 19, (2, 16))
    pad = torch.zeros(2, 16, dtype=torch.bool)
    pad[:, 10:] = True
    changed = tokens.clone()
    changed[:, 10:] = 5  # content under padding must not matter
    assert torch.allclose(model(tokens, pad), model(changed, pad), atol=1e-6)
    batch = {"tokens": tokens, "label": torch.tensor([0, 2]), "padding": pad}
    model.train()
    model.loss(batch).backward()


def test_encoder_decoder_is_causal_in_the_target():
    model = blockzoo.build_model({"name": "encoder_decoder", **TINY}).eval()
    src, tgt = torch.randint(0, 19, (2, 12)), torch.randint(0, 19, (2, 9))
    out = model(src, tgt)
    tgt2 = tgt.clone()
    tgt2[:, -1] = (tgt[:, -1] + 1) % 19
    assert torch.allclose(model(src, tgt2)[:, :-1], out[:, :-1], atol=1e-6)
    src2 = src.clone()
    src2[:, 0] = (src[:, 0] + 1) % 19
    assert not torch.allclose(model(src2, tgt), out)
    batch = {"src": src, "tgt": tgt, "tgt_targets": tgt}
    model.train()
    model.loss(batch).backward()


def test_model_loss_names_missing_batch_keys():
    model = blockzoo.build_model({"name": "encoder_classifier", **TINY, "num_classes": 3})
    with pytest.raises(ValueError, match="needs batch keys .*missing \\['label'\\]"):
        model.loss({"tokens": torch.zeros(1, 4, dtype=torch.long)})


def test_deepnorm_constants():
    alpha, beta = deepnorm_constants(6)
    assert alpha == pytest.approx(12 ** 0.25) and beta == pytest.approx(48 ** -0.25)
    model = blockzoo.build_model({"name": "decoder_lm", **TINY, "residual": "deepnorm", "init": "deepnorm"})
    assert model.blocks[0].attn_res.alpha == pytest.approx(4 ** 0.25)


def test_token_errors():
    model = blockzoo.build_model({"name": "decoder_lm", **TINY})
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens must be int64"):
        model(torch.zeros(1, 4))


def test_every_weight_is_a_parameter():
    model = blockzoo.build_model({"name": "encoder_decoder", **TINY, "norm": {"name": "layer_norm"}})
    names = {n for n, _ in model.named_parameters()}
    assert any(n.endswith("norm.bias") for n in names)
    assert all(b.numel() == 0 or not b.is_floating_point() or "inv_freq" in n for n, b in model.named_buffers())
