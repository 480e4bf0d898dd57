"""blockzoo/layer_paths.py and ``python -m blockzoo.info model=...``: each block's attention and its path."""
from __future__ import annotations

import torch

import blockzoo
from blockzoo import info, ops
from blockzoo.layer_paths import layer_paths
from blockzoo.ops.attention import PATHS

SMALL = dict(dim_model=32, num_heads=4, vocab_size=19, max_seq_len=16)


def test_each_block_reports_its_mechanism_and_path():
    model = blockzoo.build_model({"name": "encoder_classifier", **SMALL, "num_layers": 4, "num_classes": 3,
                                  "attention_pattern": [{"attention": {"name": "local", "window_size": 4}},
                                                        "favor"]})
    batch = {"tokens": torch.randint(0, 19, (2, 16)), "label": torch.tensor([0, 2])}
    ops.masked_attention(*(torch.randn(1, 1, 4, 8) for _ in range(3)))
    before = ops.last_path("masked_attention")
    paths = layer_paths(model, batch)
    assert [p.module for p in paths] == [f"blocks.{i}.self_attn.attention" for i in range(4)]
    assert [p.attention for p in paths] == ["local(window_size=4)", "favor(num_features=128)"] * 2
    assert paths[0].path.startswith("masked_attention: ") and paths[0].path.split(": ")[1] in PATHS
    assert paths[1].path == "own computation (no masked_attention)"
    assert ops.last_path("masked_attention") == before  # the probe leaves the record as it found it
    assert model.training  # and the model's mode


def test_info_with_overrides_adds_the_model_report(capsys):
    info.main(["model=tiny_lm", "model.dim_model=32", "model.num_heads=2",
               "model.attention_pattern=[local,scaled_dot_product]"])
    out = capsys.readouterr().out
    assert "op paths on" in out
    assert "layers: a pattern of 2 repeated over 4 blocks" in out
    lines = [line.split() for line in out.splitlines() if ".self_attn.attention" in line]
    assert [(words[0], words[1]) for words in lines] == [
        (f"blocks.{i}.self_attn.attention", "local(window_size=32)" if i % 2 == 0 else "scaled_dot_product")
        for i in range(4)]
    assert all(words[2] == "masked_attention:" for words in lines)
