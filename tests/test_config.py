"""Configs: compose() equals the CLI's config, validation names the key, every input form builds."""
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf

import blockzoo
from blockzoo.plugins import plugin_overrides

TINY = ["model.dim_model=32", "model.num_layers=1", "model.num_heads=2", "model.vocab_size=17", "model.max_seq_len=16"]


def test_compose_defaults_and_swap():
    cfg = blockzoo.compose(["attention=local", "attention.window_size=8", *TINY])
    assert cfg.attention.name == "local" and cfg.attention.window_size == 8
    assert cfg.model.name == "decoder_lm"
    model = blockzoo.build_model(cfg)
    assert type(model.blocks[0].self_attn.attention).__name__ == "LocalAttention"


@pytest.mark.parametrize("override, pattern", [
    ("attention.window_sizee=3", "attention.window_sizee"),
    ("attention.window_size=abc", "attention.window_size"),
    ("model.dim_modl=3", "model.dim_modl"),
    ("attention=locl", "attention/locl"),
])
def test_compose_errors_name_the_key(override, pattern):
    with pytest.raises(Exception, match=pattern.replace(".", r"\.")):
        blockzoo.compose([override])


def test_forced_unknown_key_is_caught_at_build():
    cfg = blockzoo.compose(["+attention.windw=3", *TINY])
    with pytest.raises(ValueError, match=r"model\.attention\.windw: unknown key"):
        blockzoo.build_model(cfg)


def test_build_model_from_every_form(tmp_path):
    cfg = blockzoo.compose(TINY)
    container = OmegaConf.to_container(cfg, resolve=True)
    path = tmp_path / "m.yaml"
    OmegaConf.save(cfg, path)
    torch.manual_seed(0)
    a = blockzoo.build_model(cfg)
    torch.manual_seed(0)
    b = blockzoo.build_model(container)
    torch.manual_seed(0)
    c = blockzoo.build_model(str(path))
    torch.manual_seed(0)
    d = blockzoo.build_model(blockzoo.blocks.model.DecoderLMConfig(
        name="decoder_lm", dim_model=32, num_layers=1, num_heads=2, vocab_size=17, max_seq_len=16))
    tokens = torch.randint(0, 17, (2, 16))
    for m in (b, c, d):
        assert torch.equal(a(tokens), m(tokens))


def test_model_config_round_trip():
    model = blockzoo.build_model(blockzoo.compose(["attention=local", "norm=rms_norm", "feedforward=swiglu", *TINY]))
    again = blockzoo.build_model(model.to_config())
    again.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 17, (2, 16))
    assert torch.equal(model(tokens), again(tokens))


def test_num_heads_must_divide_width():
    with pytest.raises(ValueError, match="num_heads=3 must divide model.dim_model=32"):
        blockzoo.build_model(blockzoo.compose([*TINY, "model.num_heads=3"]))


def test_plugin_override_parsing():
    assert plugin_overrides(["+plugins=[a.b,c]", "x=1"]) == ["a.b", "c"]
    assert plugin_overrides(["plugins=a.b"]) == ["a.b"]


def test_missing_yaml_path():
    with pytest.raises(ValueError, match="config file not found"):
        blockzoo.build_model("/nonexistent/model.yaml")


@dataclass
class _NotAModel:
    x: int = 1


def test_model_config_needs_a_name():
    with pytest.raises(ValueError, match="model: missing 'name'"):
        blockzoo.build_model(_NotAModel())


def test_full_app_config_takes_sizes_from_its_task():
    """The README's library example: compose() with a task, build_model() sizes the model from it."""
    model = blockzoo.build_model(blockzoo.compose(["model=tiny_lm", "attention=local", "task=copy"]))
    task = blockzoo.tasks.build_task(blockzoo.compose(["task=copy"]))
    assert model.cfg.vocab_size == task.vocab_size
    classifier = blockzoo.build_model(blockzoo.compose(["model=encoder_classifier", "task=listops"]))
    assert classifier.cfg.num_classes == 10
