"""Configs: compose() equals the CLI's config, validation names the key, every input form builds; unknown keys,
groups, options and out-of-range values fail with their path and the closest valid names."""
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import blockzoo
from blockzoo.plugins import plugin_overrides
from cli_helpers import run_app

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
    ("model.dim_modl=3", "model.dim_modl: no key 'dim_modl' in model; did you mean 'dim_model'?"),
    ("attention=locl", "attention=locl: no such option; did you mean 'local'"),
    ("+atention=local", "+atention=local: no key or config group 'atention'; did you mean 'attention'?"),
    ("atention=local", "atention=local: no key or config group 'atention'; did you mean 'attention'?"),
    ("trainr.steps=3", "trainr.steps=3: no key or config group 'trainr'; did you mean 'trainer'?"),
])
def test_compose_errors_name_the_key(override, pattern):
    with pytest.raises(blockzoo.ConfigError, match=re.escape(pattern)) as err:
        blockzoo.compose([override])
    assert "To append to your config use +" not in str(err.value)  # Hydra's advice would contradict the hint


def test_compose_hints_like_the_cli():
    with pytest.raises(blockzoo.ConfigError, match=r"hint: attention\.window_sizee: no key 'window_sizee' in "
                                                   r"attention; did you mean 'window_size'\?"):
        blockzoo.compose(["attention=local", "attention.window_sizee=3"])


def test_app_keys_are_the_root_config_keys():
    assert set(blockzoo.compose([])) == set(blockzoo.composition.ROOT_KEYS)


@pytest.fixture
def presets(tmp_path: Path) -> Path:
    """A config folder on the search path: a preset adding a misspelt root key, and one with a YAML syntax error."""
    (tmp_path / "attention").mkdir()
    (tmp_path / "attention" / "sloppy.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        defaults:
          - /attention/local@attention
        atention:
          window_size: 4
    """))
    broken = "defaults:\n  - /schema/attention/local@_here_\nwindow_size: [8\n"
    (tmp_path / "attention" / "broken.yaml").write_text(broken)
    return tmp_path


def test_misspelt_root_key_in_a_preset_is_an_error(presets):
    with pytest.raises(blockzoo.ConfigError, match="atention: not a key of the app's config; did you mean 'attention'"):
        blockzoo.compose([f"hydra.searchpath=[file://{presets}]", "attention=sloppy"])


def test_yaml_syntax_error_in_a_preset_is_reported_once_without_a_hint(presets):
    with pytest.raises(blockzoo.ConfigError) as err:
        blockzoo.compose([f"hydra.searchpath=[file://{presets}]", "attention=broken"])
    message = str(err.value)
    assert "broken.yaml\", line 3" in message and message.count("expected ',' or ']'") == 1
    assert "hint" not in message and "no such option" not in message


@pytest.mark.parametrize("override, message", [
    ("trainer.backend=trion", "trainer.backend='trion': expected one of auto, torch, triton; did you mean 'triton'?"),
    ("trainer.precision=fp16", "trainer.precision='fp16': expected one of auto, fp32, bf16; did you mean 'bf16'"),
    ("trainer.strategy=dpp", "trainer.strategy='dpp': expected one of single, ddp, fsdp; did you mean 'ddp'"),
    ("trainer.device=gpu", "trainer.device='gpu': expected one of auto, cpu, cuda"),
    ("model.residual=prenorm", "model.residual='prenorm': expected one of pre, post, deepnorm; did you mean"),
    ("model.qkv=fusd", "model.qkv='fusd': expected one of fused, separate; did you mean 'fused'?"),
    ("feedforward.activation=gleu", "feedforward.activation='gleu': expected one of none, relu, gelu"),
    ("trainer.steps=0", "trainer.steps=0: expected >= 1"),
    ("trainer.lr=0", "trainer.lr=0.0: expected > 0"),
])
def test_choices_and_values_are_checked_at_composition(override, message):
    with pytest.raises(blockzoo.ConfigError, match=re.escape(message)):
        blockzoo.compose([override])


MODEL = {"name": "decoder_lm", "dim_model": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 17, "max_seq_len": 16}


@pytest.mark.parametrize("change, message", [
    ({"num_heads": 0}, "model.num_heads=0: expected >= 1"),
    ({"num_heads": 3}, "model.num_heads=3 must divide model.dim_model=32"),
    ({"num_kv_heads": 3, "num_heads": 4}, "model.num_kv_heads=3 must divide model.num_heads=4"),
    ({"num_layers": 0}, "model.num_layers=0: expected >= 1"),
    ({"name": "encoder_decoder", "num_decoder_layers": -1}, "model.num_decoder_layers=-1: expected >= 0"),
    ({"dropout": 1.0}, "model.dropout=1.0: expected a probability in [0, 1)"),
    ({"attention": {"name": "scaled_dot_product", "dropout": -0.1}}, "attention.dropout=-0.1: expected a probability"),
    ({"feedforward": {"name": "mlp", "dropout": 1.5}}, "feedforward.dropout=1.5: expected a probability"),
    ({"feedforward": {"name": "mlp", "hidden_mult": 0}}, "feedforward.hidden_mult=0.0: expected > 0"),
    ({"attention": {"name": "local", "window_size": 0}}, "attention.window_size must be >= 1, got 0"),
    ({"attention": {"name": "blocksparse", "block_size": 0}}, "attention.block_size must be >= 1, got 0"),
])
def test_values_are_checked_at_build_with_their_path(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        blockzoo.build_model({**MODEL, **change})


@pytest.mark.parametrize("override", ["+plugins=json", "plugins=json", "plugins=[json]", "+plugins=[json]"])
def test_plugins_takes_a_single_name_or_a_list(override):
    assert list(blockzoo.compose([override]).plugins) == ["json"]


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
    assert plugin_overrides(["plugins=[a,"]) == []  # composing reports the syntax error


def test_cli_reports_a_misspelt_group_like_compose(tmp_path):
    """Today's bug: +atention=local trained to the end with the default attention."""
    for override in ("+atention=local", "atention=local"):
        proc = run_app([override, "trainer.steps=1", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
        assert proc.returncode == 1 and not (tmp_path / "run").exists()
        assert f"error: {override}: no key or config group 'atention'; did you mean 'attention'?" in proc.stderr
        assert "To append" not in proc.stderr and "Traceback" not in proc.stderr


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
