"""Per-layer patterns (blockzoo/layer_pattern.py): composition, per-layer modules, checkpoint round trip, describe."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

import blockzoo
from blockzoo import compare, layer_pattern
from blockzoo.composition import sweep_jobs
from blockzoo.config import ConfigError
from blockzoo.registry import registry
from cli_helpers import TINY, check, run_app

SMALL = dict(dim_model=32, num_heads=4, vocab_size=19, max_seq_len=16)
HYBRID = ["local", "local", "local", "scaled_dot_product"]


def lm(pattern, num_layers=4, **fields):
    return blockzoo.build_model({"name": "decoder_lm", **SMALL, "num_layers": num_layers,
                                 "attention_pattern": pattern, **fields})


def mechanisms(blocks) -> list[str]:
    return [b.self_attn.attention.cfg.name for b in blocks]


# -- composition ---------------------------------------------------------------------------------
def test_command_line_list_builds_one_mechanism_per_layer():
    cfg = blockzoo.compose([f"model.attention_pattern=[{','.join(HYBRID)}]", "attention.dropout=0.25"])
    assert list(cfg.model.attention_pattern) == HYBRID
    model = blockzoo.build_model(cfg)
    assert mechanisms(model.blocks) == HYBRID  # tiny_lm: 4 layers
    local = model.blocks[0].self_attn.attention.cfg
    assert local.window_size == 32  # the local preset's window
    assert local.dropout == 0.25  # a field the model's attention sets away from its preset carries over
    assert model.blocks[3].self_attn.attention.cfg.dropout == 0.25


def test_yaml_entries_override_attention_and_feedforward_fields(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({"name": "decoder_lm", **SMALL, "num_layers": 6, "attention_pattern": [
        {"attention": {"name": "local", "window_size": 4}},
        {"attention": "scaled_dot_product", "feedforward": {"name": "swiglu", "hidden_dim": 40}},
        {"feedforward": {"hidden_mult": 2.0}},
    ]}))
    model = blockzoo.build_model(path)
    assert mechanisms(model.blocks) == ["local", "scaled_dot_product", "scaled_dot_product"] * 2
    for i in (0, 3):
        assert model.blocks[i].self_attn.attention.cfg.window_size == 4
    ffs = [b.feedforward.cfg for b in model.blocks]
    assert [f.name for f in ffs] == ["mlp", "glu", "mlp"] * 2
    assert ffs[1].hidden_dim == 40 and ffs[1].activation == "silu"  # swiglu's own activation, not mlp's gelu
    assert ffs[2].hidden_mult == 2.0 and ffs[0].hidden_mult == 4.0
    assert model.blocks[2].self_attn.attention.cfg.name == "scaled_dot_product"  # the model's own attention


def test_the_pattern_repeats_over_the_layers():
    model = lm(["local", {"attention": {"name": "local", "window_size": 2}}, "scaled_dot_product"], num_layers=6)
    windows = [getattr(b.self_attn.attention.cfg, "window_size", None) for b in model.blocks]
    assert windows == [32, 2, None, 32, 2, None]


@pytest.mark.parametrize("length, layers", [(3, 4), (4, 6), (2, 3)])
def test_a_length_that_does_not_divide_the_layers_is_refused(length, layers):
    with pytest.raises(ConfigError, match=rf"model.attention_pattern has {length} entries, which does not divide "
                                          rf"model.num_layers={layers}"):
        lm(["local"] * length, num_layers=layers)


def test_a_bad_length_is_refused_at_composition():
    with pytest.raises(ConfigError, match=r"3 entries, which does not divide model.num_layers=4.*1, 2, 4"):
        blockzoo.compose(["model.attention_pattern=[local,local,scaled_dot_product]"])


@pytest.mark.parametrize("pattern, message", [
    (["local", "lcal"], r"model.attention_pattern\[1\]: unknown attention 'lcal'; did you mean 'local'"),
    ([{"attention": {"name": "nystrm"}}],
     r"model.attention_pattern\[0\].attention.name: unknown attention 'nystrm'; did you mean 'nystrom'"),
    ([{"feedforward": "swigul"}],
     r"model.attention_pattern\[0\].feedforward.name: unknown feedforward 'swigul'; did you mean 'swiglu'"),
])
def test_unknown_names_get_close_matches_and_their_path(pattern, message):
    with pytest.raises(ConfigError, match=message):
        lm(pattern, num_layers=len(pattern))


def test_unknown_name_is_refused_at_composition():
    with pytest.raises(ConfigError, match=r"model.attention_pattern\[2\]: unknown attention 'scaled_dot_prodct'; "
                                          r"did you mean 'scaled_dot_product'"):
        blockzoo.compose(["model.attention_pattern=[local,local,scaled_dot_prodct,local]"])


@pytest.mark.parametrize("entry, message", [
    ({"attention": {"name": "local", "window_sizee": 3}},
     r"model.attention_pattern\[0\].attention.window_sizee: unknown key.*did you mean 'window_size'"),
    ({"atention": "local"}, r"model.attention_pattern\[0\].atention: unknown key; did you mean 'attention'"),
    ({"feedforward": {"hidden_mult": -1.0}}, r"model.attention_pattern\[0\].feedforward.hidden_mult=-1.0: "
                                             r"expected > 0"),
    ({"attention": {"name": "local", "window_size": "wide"}}, r"model.attention_pattern\[0\].attention.window_size"),
    ({"attention": {"dropout": 1.5}}, r"model.attention_pattern\[0\].attention.dropout=1.5: expected a probability"),
    (7, r"model.attention_pattern\[0\]: expected an attention name or a mapping"),
    ("feedforward", r"model.attention_pattern\[0\]='feedforward': an entry is an attention name or a mapping"),
])
def test_bad_entries_are_named_by_their_path(entry, message):
    with pytest.raises(ConfigError, match=message):
        lm([entry], num_layers=2)


def test_bad_override_key_is_refused_at_composition():
    with pytest.raises(ConfigError, match=r"model.attention_pattern\[1\].attention.window_sise: unknown key"):
        blockzoo.compose(["model.attention_pattern=[local,{attention:{window_sise:3}}]"])


@pytest.mark.parametrize("pattern", ["local", [], {"attention": "local"}])
def test_a_pattern_that_is_not_a_list_of_entries_is_refused(pattern):
    with pytest.raises(ConfigError, match=r"model.attention_pattern: (expected a list|an empty pattern)"):
        lm(pattern)


def test_an_attention_that_cannot_be_causal_is_refused_in_a_decoder():
    with pytest.raises(ConfigError, match=r"model.attention_pattern\[1\].attention: 'linformer' cannot honour "
                                          "causal masking"):
        lm(["local", "linformer"], num_layers=2)


def test_hierarchical_model_refuses_a_pattern():
    with pytest.raises(ValueError, match="hierarchical model takes no per-layer pattern"):
        blockzoo.build_model({"name": "hierarchical", "num_classes": 3, "attention_pattern": ["pooling"]})


# -- the per-layer modules -----------------------------------------------------------------------
def test_each_block_is_the_block_its_layer_config_builds():
    """Block i computes exactly what a block built alone from layer i's resolved config computes (float64,
    forward and backward): the pattern reaches the modules, in order."""
    model = lm([{"attention": {"name": "local", "window_size": 2}}, "scaled_dot_product",
                {"attention": "random", "feedforward": "swiglu"}], num_layers=3).double()
    for i, (block, layer) in enumerate(zip(model.blocks, model.stacks["layers"].layers)):
        alone = registry("block").build(dict(name="decoder_only", dim_model=32, num_heads=4, causal=True,
                                             max_seq_len=16, attention=layer.attention,
                                             feedforward=layer.feedforward, norm=model.cfg.norm))
        alone.load_state_dict(block.state_dict())
        alone.double()
        x = torch.randn(2, 16, 32, dtype=torch.float64, requires_grad=True)
        y = block(x)
        y_alone = alone(x)
        torch.testing.assert_close(y, y_alone, rtol=0, atol=0)
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, x, g)
        (gx_alone,) = torch.autograd.grad(y_alone, x, g)
        torch.testing.assert_close(gx, gx_alone, rtol=0, atol=0)
    assert type(model.blocks[2].feedforward).__name__ != type(model.blocks[0].feedforward).__name__


def test_layers_really_differ_a_window_bounds_what_an_output_sees():
    """With two causal window-2 layers the last position sees only the last three tokens; a global layer in the
    pattern lets it see the first token too."""
    tokens = torch.randint(1, 19, (2, 16))
    changed = tokens.clone()
    changed[:, 0] = 0
    for pattern, sees_first in ((["local", "local"], False), (["local", "scaled_dot_product"], True)):
        model = lm([{"attention": {"name": name, "window_size": 2}} if name == "local" else name
                    for name in pattern], num_layers=2).double().eval()
        with torch.no_grad():
            a, b = model(tokens)[:, -1], model(changed)[:, -1]
        assert (not torch.equal(a, b)) == sees_first, pattern


def test_encoder_classifier_and_encoder_decoder_stacks():
    clf = blockzoo.build_model({"name": "encoder_classifier", **SMALL, "num_layers": 4, "num_classes": 3,
                                "attention_pattern": ["linformer", "scaled_dot_product"]})
    assert mechanisms(clf.blocks) == ["linformer", "scaled_dot_product"] * 2  # no causal mask: linformer is fine
    tokens = torch.randint(0, 19, (2, 16))
    assert clf(tokens).shape == (2, 3)
    ed = blockzoo.build_model({"name": "encoder_decoder", **SMALL, "num_layers": 2, "num_decoder_layers": 3,
                               "attention_pattern": ["local", "scaled_dot_product"],
                               "decoder_attention_pattern": [{"attention": {"name": "local", "window_size": 4}}]})
    assert mechanisms(ed.encoder) == ["local", "scaled_dot_product"]
    assert mechanisms(ed.decoder) == ["local"] * 3
    assert [b.self_attn.attention.cfg.window_size for b in ed.decoder] == [4] * 3
    assert ed(tokens, tokens).shape == (2, 16, 19)
    shared = blockzoo.build_model({"name": "encoder_decoder", **SMALL, "num_layers": 2, "num_decoder_layers": 4,
                                   "attention_pattern": ["local", "scaled_dot_product"]})
    assert mechanisms(shared.decoder) == ["local", "scaled_dot_product"] * 2  # one pattern for both stacks
    with pytest.raises(ConfigError, match=r"model.attention_pattern has 2 entries, which does not divide "
                                          r"model.num_decoder_layers=3"):
        blockzoo.build_model({"name": "encoder_decoder", **SMALL, "num_layers": 2, "num_decoder_layers": 3,
                              "attention_pattern": ["local", "scaled_dot_product"]})


def test_reversible_lm_takes_a_pattern():
    model = blockzoo.build_model({"name": "reversible_lm", **SMALL, "num_layers": 4,
                                  "attention_pattern": ["local", "scaled_dot_product"]})
    assert mechanisms(model.blocks) == ["local", "scaled_dot_product"] * 2
    tokens = torch.randint(0, 19, (2, 16))
    model.loss({"tokens": tokens, "targets": tokens}).backward()
    assert all(p.grad is not None for p in model.blocks[0].parameters())


# -- checkpoint round trip -----------------------------------------------------------------------
def test_to_config_rebuilds_the_same_per_layer_model(monkeypatch):
    model = lm([{"attention": {"name": "local", "window_size": 4}}, "local", "scaled_dot_product",
                {"feedforward": "swiglu"}], num_layers=8)
    saved = model.to_config()
    # the saved pattern is resolved: it rebuilds the same layers even if a preset changes later
    monkeypatch.setattr(layer_pattern, "preset_values", lambda kind, name: None)
    again = blockzoo.build_model(saved)
    assert again.to_config() == saved
    for a, b in zip(model.blocks, again.blocks):
        assert a.self_attn.attention.cfg == b.self_attn.attention.cfg
        assert a.feedforward.cfg == b.feedforward.cfg
    assert [b.self_attn.attention.cfg.window_size for b in again.blocks[:2]] == [4, 32]


def test_save_load_of_a_patterned_model_is_bit_exact(tmp_path):
    model = lm(["local", "scaled_dot_product"], num_layers=4, feedforward={"name": "glu", "activation": "silu"})
    again = blockzoo.load(blockzoo.save(model, tmp_path / "ckpt"))
    assert mechanisms(again.blocks) == mechanisms(model.blocks)
    tokens = torch.randint(0, 19, (3, 16))
    model.eval()
    assert torch.equal(model(tokens), again(tokens))
    saved = yaml.safe_load((tmp_path / "ckpt" / "config.yaml").read_text())
    assert [e["attention"]["name"] for e in saved["attention_pattern"]] == ["local", "scaled_dot_product"]


# -- describe, sweeps and the CLI ----------------------------------------------------------------
def test_describe_shows_the_shipped_hybrid_preset_layer_by_layer():
    text = blockzoo.describe("model", "gpt_small_hybrid")
    assert "layers: a pattern of 4 repeated over 12 blocks" in text
    assert "[0] blocks 0, 4, 8: attention local(window_size=256), feedforward mlp" in text
    assert "[3] blocks 3, 7, 11: attention scaled_dot_product, feedforward mlp" in text
    assert "layers: a pattern" not in blockzoo.describe("model", "gpt_small")
    assert "gpt_small_hybrid" in blockzoo.list_models("gpt_small*")


def test_model_layer_lines_and_the_preset_build():
    cfg = blockzoo.compose(["model=gpt_small_hybrid", "model.dim_model=48", "model.num_heads=4",
                            "model.vocab_size=19"])
    model = blockzoo.build_model(cfg)
    assert mechanisms(model.blocks) == HYBRID * 3
    assert all(b.self_attn.attention.cfg.window_size == 256 for i, b in enumerate(model.blocks) if i % 4 != 3)
    assert model.layer_lines()[0] == "layers: a pattern of 4 repeated over 12 blocks"
    assert lm(None).layer_lines() == []


def test_patterns_sweep_like_mechanisms():
    jobs = sweep_jobs(["model.attention_pattern=[local,scaled_dot_product],[scaled_dot_product,local]"])
    assert [blockzoo.build_model(blockzoo.compose(job)).cfg.attention_pattern[0]["attention"]["name"]
            for job in jobs] == ["local", "scaled_dot_product"]


def test_cli_sweeps_patterns_and_compare_tabulates_them(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    proc = check(run_app(["-m", "model.attention_pattern=[local,scaled_dot_product],[scaled_dot_product,local]",
                          *TINY, "model.num_layers=2", "attention=local", "attention.window_size=4", "task=copy", "task.seq_len=16",
                          "trainer.steps=2", "trainer.eval_every=0", f"hydra.sweep.dir={sweep}"], cwd=tmp_path))
    assert "[0] blocks 0: attention local(window_size=4)" in proc.stdout + proc.stderr  # the startup notice
    runs = sorted(p.parent for p in sweep.rglob("metrics.jsonl"))
    assert len(runs) == 2
    assert all(json.loads(r.joinpath("metrics.jsonl").read_text().splitlines()[-1])["final"] for r in runs)
    first = blockzoo.load(runs[0] / "checkpoint")
    assert mechanisms(first.blocks) == ["local", "scaled_dot_product"]
    assert compare.main([str(sweep)]) == 0
    table = capsys.readouterr().out
    assert "model.attention_pattern=[local,scaled_dot_product]" in table
    assert "model.attention_pattern=[scaled_dot_product,local]" in table


def test_cli_refuses_a_bad_pattern_before_training(tmp_path):
    proc = run_app([*TINY, "model.num_layers=2", "model.attention_pattern=[local,lokal]",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "model.attention_pattern[1]: unknown attention 'lokal'; did you mean 'local'" in proc.stderr
