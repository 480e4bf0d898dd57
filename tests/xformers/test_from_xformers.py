"""blockzoo.from_xformers without xformers installed: configs are plain dicts; bad input names its path."""
import subprocess
import sys

import pytest
import torch
import yaml

import blockzoo
from blockzoo.config import ConfigError


def block(**changes):
    cfg = {"block_type": "encoder", "num_layers": 2, "dim_model": 16, "residual_norm_style": "pre",
           "position_encoding_config": {"name": "vocab", "seq_len": 8, "vocab_size": 11},
           "multi_head_config": {"num_heads": 2, "attention": {"name": "local", "window_size": 3, "dropout": 0.0}},
           "feedforward_config": {"name": "MLP", "dropout": 0.0, "activation": "relu", "hidden_layer_multiplier": 2}}
    cfg.update(changes)
    return cfg


def test_builds_a_model_that_returns_hidden_states():
    model = blockzoo.from_xformers([block()])
    out = model(torch.randint(0, 11, (2, 8)))
    assert out.shape == (2, 8, 16) and torch.isfinite(out).all()


def test_misspelt_attention_field_names_its_path_and_the_close_match():
    bad = block()
    bad["multi_head_config"]["attention"]["windw_size"] = 3
    with pytest.raises(ConfigError, match=r"block_configs\[1\]\.multi_head_config\.attention\.windw_size: "
                                          r"unknown field; did you mean 'window_size'\?"):
        blockzoo.from_xformers([block(), bad])


@pytest.mark.parametrize("path,changes", [
    (r"block_configs\[0\]\.ffn_config", {"ffn_config": {}}),  # a later xFormers' field
    (r"block_configs\[0\]\.feedforward_config\.hidden_layer_multiplyer",
     {"feedforward_config": {"name": "MLP", "hidden_layer_multiplyer": 2}}),
    (r"block_configs\[0\]\.multi_head_config\.dim_value", {"multi_head_config": {"num_heads": 2, "dim_value": 8,
                                                                                  "attention": {"name": "favor"}}}),
    (r"block_configs\[0\]\.multi_head_config\.attention\.name='flash'",
     {"multi_head_config": {"num_heads": 2, "attention": {"name": "flash"}}}),
    (r"block_configs\[0\]\.residual_norm_style='prenorm'", {"residual_norm_style": "prenorm"}),
    (r"block_configs\[0\]\.simplicial_embeddings", {"simplicial_embeddings": {"L": 4}}),
    (r"block_configs\[0\]\.feedforward_config\.gate: .*TODO\(merge\): round-robin", {"feedforward_config": {
        "name": "MixtureOfExperts", "number_of_experts": 2, "gate": "round_robin"}}),
    (r"block_configs\[0\]\.feedforward_config\.number_of_local_experts", {"feedforward_config": {
        "name": "MixtureOfExperts", "number_of_experts": 4, "number_of_local_experts": 1, "gate": "top_2"}}),
    (r"block_configs\[0\]\.multi_head_config\.attention\.num_landmarks: .*random per call", {"multi_head_config": {
        "num_heads": 2, "attention": {"name": "orthoformer", "num_landmarks": 4, "seq_len": 8}}}),
    (r"block_configs\[0\]\.multi_head_config\.attention\.q_compose", {"multi_head_config": {
        "num_heads": 2, "attention": {"name": "compositional", "q_compose": True}}}),
    (r"block_configs\[0\]\.multi_head_config\.attention\.dropout", {"multi_head_config": {
        "num_heads": 2, "attention": {"name": "fourier_mix", "dropout": 0.1}}}),
    (r"block_configs\[0\]\.multi_head_config\.attention\.causal", {"multi_head_config": {
        "num_heads": 2, "attention": {"name": "linformer", "seq_len": 8, "causal": True}}}),
])
def test_bad_or_unmapped_fields_are_refused_by_path(path, changes):
    with pytest.raises(ConfigError, match=path):
        blockzoo.from_xformers([block(**changes)])


def test_state_dict_missing_extra_and_shape_errors():
    model = blockzoo.from_xformers([block(num_layers=1)])
    del model
    with pytest.raises(ValueError, match=r"missing .*encoders\.0\.wrap_att\.layer\.sublayer\.in_proj_container"):
        blockzoo.from_xformers([block(num_layers=1)], {"bogus.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['bogus.weight'\]"):
        blockzoo.from_xformers([block(num_layers=1)], {"bogus.weight": torch.zeros(1)})
    state = _xformers_like_state(block(num_layers=1))
    state["encoders.0.wrap_att.layer.sublayer.proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"sublayer\.proj\.weight has shape \(3, 3\).*encoders\.0\.self_attn\.out_proj"):
        blockzoo.from_xformers([block(num_layers=1)], state)


def _xformers_like_state(cfg):
    """The state_dict an xFormers model of ``cfg`` has, made from the key map itself (no xformers needed)."""
    from blockzoo.xformers.weights import key_map

    model = blockzoo.from_xformers([cfg])
    own = model.state_dict()
    state = {}
    for bz, (xf_keys, _) in key_map(model).rules.items():
        if bz in own:
            for x in xf_keys:
                state[x] = own[bz].clone() if len(xf_keys) == 1 else own[bz].chunk(len(xf_keys))[0].clone()
    return state


def test_weights_round_trip_through_the_key_map():
    cfg = block(num_layers=1)
    state = _xformers_like_state(cfg)
    model = blockzoo.from_xformers([cfg], state)
    torch.testing.assert_close(model.state_dict()["encoders.0.self_attn.q_proj.weight"],
                               state["encoders.0.wrap_att.layer.sublayer.in_proj_container.q_proj.weight"])


def test_config_file_and_migrate_cli_write_a_buildable_preset(tmp_path):
    src = tmp_path / "xf.yaml"
    src.write_text(yaml.safe_dump({"stack_configs": [block()], "tie_embedding_weights": False}))
    out = tmp_path / "preset.yaml"
    run = subprocess.run([sys.executable, "-m", "blockzoo.migrate", "xformers", str(src), "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    torch.manual_seed(0)
    from_file = blockzoo.from_xformers(str(src))
    preset = blockzoo.build_model(str(out))
    preset.load_state_dict(from_file.state_dict())
    tokens = torch.randint(0, 11, (2, 8))
    torch.testing.assert_close(preset(tokens), from_file(tokens))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([block(dim_modle=3)]))
    run = subprocess.run([sys.executable, "-m", "blockzoo.migrate", "xformers", str(bad), "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "block_configs[0].dim_modle: unknown field" in run.stderr


@pytest.mark.parametrize("ff,keys", [
    ({"name": "FusedMLP", "dropout": 0.0, "activation": "smelu", "hidden_layer_multiplier": 2},
     {"feedforward.fc1.weight": "sublayer.mlp.0.weight", "feedforward.fc1.bias": "sublayer.mlp.1.bias",
      "feedforward.fc2.weight": "sublayer.mlp.2.weight", "feedforward.fc2.bias": "sublayer.mlp.3.bias"}),
    ({"name": "MixtureOfExperts", "dropout": 0.0, "activation": "relu", "number_of_experts": 3, "gate": "top_2",
      "hidden_layer_multiplier": 2},
     {"feedforward.router.weight": "sublayer.moe.gate.wg.weight",
      "feedforward.experts.2.fc1.weight": "sublayer.moe.experts.2.mlp.0.weight",
      "feedforward.experts.0.fc2.bias": "sublayer.moe.experts.0.mlp.3.bias"}),
])
def test_fused_mlp_and_moe_load_xformers_keys(ff, keys):
    """xFormers builds these only with CUDA+Triton (FusedMLP) or FairScale+torch.distributed (MoE): the key map
    is checked on the names their modules registered."""
    cfg = block(num_layers=1, feedforward_config=ff, residual_norm_style="post")
    state = {k: torch.randn_like(v) for k, v in _xformers_like_state(cfg).items()}
    prefix = "encoders.0.wrap_ff.sublayer.layer."  # a post-norm residual's sublayer
    if ff["name"] == "MixtureOfExperts":  # xFormers registered the gate twice: as gate and as moe.gate
        state[f"{prefix}gate.wg.weight"] = state[f"{prefix}moe.gate.wg.weight"]
    model = blockzoo.from_xformers([cfg], state)
    own = model.state_dict()
    for bz, xf in keys.items():
        torch.testing.assert_close(own[f"encoders.0.{bz}"], state[prefix + xf.removeprefix("sublayer.")])
    out = model(torch.randint(0, 11, (2, 8)))
    assert torch.isfinite(out).all()
