"""The fields of xFormers' components-era configs (v0.0.20), and their validation.

xFormers silently dropped any key its dataclasses did not know; here every key is checked, so a
misspelt field or one from a later release fails with its path in the list and the closest names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from blockzoo.config import ConfigError
from blockzoo.suggest import close_matches

BLOCK_FIELDS = ("block_type", "num_layers", "dim_model", "residual_norm_style", "layer_norm_style", "normalization",
                "reversible", "position_encoding_config", "feedforward_config", "use_triton", "layer_position")
ENCODER_FIELDS = BLOCK_FIELDS + ("multi_head_config", "simplicial_embeddings", "patch_embedding_config")
DECODER_FIELDS = BLOCK_FIELDS + ("multi_head_config_masked", "multi_head_config_cross")
MULTI_HEAD_FIELDS = ("dim_model", "num_heads", "attention", "bias", "residual_dropout", "dim_key", "dim_value",
                     "in_proj_container", "use_separate_proj_weight", "use_rotary_embeddings", "out_proj")
# Filled in by build_multi_head_attention for every mechanism, and `seq_len`, which the era's examples
# passed to every mechanism (xFormers dropped it where the mechanism had no such field).
ATTENTION_COMMON = ("name", "dropout", "num_heads", "dim_model", "dim_features", "seq_len", "causal")
ATTENTION_FIELDS: dict[str, tuple[str, ...]] = {
    "scaled_dot_product": ("to_seq_len",),
    "local": ("window_size", "force_sparsity"),
    "random": ("r", "constant_masking", "force_sparsity"),
    "global": ("attention_query_mask", "force_sparsity"),
    "blocksparse": ("layout", "block_size"),
    "linformer": ("k",),
    "nystrom": ("num_landmarks", "landmark_pooling", "pinverse_original_init", "inv_iterations",
                "v_skip_connection", "conv_kernel_size", "use_razavi_pinverse"),
    "favor": ("dim_head", "iter_before_redraw", "feature_map", "feature_map_type", "normalize_inputs"),
    "fourier_mix": (),
    "pooling": ("pool_size", "stride", "padding"),
    "visual": (),
    "lambda": ("dim_head",),
    "orthoformer": ("num_landmarks", "subsample_fraction", "landmark_selection"),
    "compositional": ("dim_attn", "num_rules", "dim_key", "dim_value", "dim_selection", "qk_rule", "nonlinear",
                      "q_compose", "bias", "in_proj_container", "use_separate_proj_weight"),
}
FEEDFORWARD_FIELDS: dict[str, tuple[str, ...]] = {
    "MLP": ("dropout", "activation", "hidden_layer_multiplier", "bias"),
    "FusedMLP": ("dropout", "activation", "hidden_layer_multiplier", "bias"),
    "MixtureOfExperts": ("dropout", "activation", "hidden_layer_multiplier", "number_of_experts", "gate",
                         "number_of_local_experts", "expert_constructor", "group"),
    "Conv2DFeedforward": ("dropout", "activation", "hidden_layer_multiplier", "dim_model_out", "act_layer"),
}
POSITION_FIELDS: dict[str, tuple[str, ...]] = {
    "sine": ("seq_len",), "vocab": ("seq_len", "vocab_size", "dropout"), "learnable": ("seq_len", "add_class_token"),
}
MODEL_FIELDS = ("stack_configs", "block_configs", "tie_embedding_weights", "weight_init")


def _unknown(path: str, key: str, valid: tuple[str, ...] | list[str]) -> ConfigError:
    return ConfigError(f"{path}.{key}: unknown field{close_matches(key, list(valid))} "
                       f"(xFormers 0.0.20 knows: {', '.join(valid)})")


def check_keys(data: Any, valid: tuple[str, ...] | list[str], path: str) -> dict[str, Any]:
    """``data`` as a dict whose keys are all in ``valid``; else ConfigError naming ``path.key``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in valid:
            raise _unknown(path, str(key), valid)
    return data


def choice(data: dict[str, Any], key: str, table: dict[str, Any], path: str) -> str:
    """The ``name``-like value ``data[key]``, checked against ``table``'s names."""
    if key not in data:
        raise ConfigError(f"{path}.{key}: missing (one of {', '.join(table)})")
    value = data[key]
    if value not in table:
        raise ConfigError(f"{path}.{key}={value!r}: unknown{close_matches(str(value), list(table))} "
                          f"(xFormers 0.0.20 has: {', '.join(table)})")
    return value


def load_config(config: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(block configs, model-level options) from what ``xFormerConfig`` took or a YAML/JSON file of it."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"xFormers config file not found: {path}")
        config = yaml.safe_load(path.read_text())  # JSON is YAML
    top: dict[str, Any] = {}
    if isinstance(config, dict):
        check_keys(config, MODEL_FIELDS, "config")
        if "stack_configs" in config and "block_configs" in config:
            raise ConfigError("config: give stack_configs or block_configs, not both")
        top = {k: v for k, v in config.items() if k not in ("stack_configs", "block_configs")}
        config = config.get("stack_configs", config.get("block_configs"))
        if config is None:
            raise ConfigError("config.stack_configs: missing (the list of block configs)")
        if isinstance(config, dict):  # xFormerConfig also took {name: block config}
            config = list(config.values())
    if not isinstance(config, (list, tuple)) or not config:
        raise ConfigError(f"config: expected a non-empty list of xFormers block configs, got {type(config).__name__}")
    return [dict(c) if isinstance(c, dict) else c for c in config], top
