"""xFormers (v0.0.20) block configs -> one blockzoo ``xformers_stack`` model config (a plain dict).

Every field of the era is either mapped or refused by name (:func:`refuse`); nothing is dropped.
"""
from __future__ import annotations

from typing import Any

from blockzoo.config import ConfigError
from blockzoo.xformers import schema
from blockzoo.xformers.attention_map import PROJECTIONS, map_attention

ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "leaky_relu": "leaky_relu", "squared_relu": "squared_relu",
               "star_relu": "star_relu", "smelu": "smelu", None: "none"}
RESIDUALS = {"pre": "pre", "post": "post", "deepnorm": "deepnorm"}
NORMS = {"layernorm": "layer_norm", "skip": "skip"}
FEEDFORWARDS = {"MLP": "mlp", "FusedMLP": "fused_mlp", "MixtureOfExperts": "moe", "Conv2DFeedforward": "conv2d"}
WEIGHT_INITS = {"vit": "vit", "timm": "timm", "moco": "moco", "small": "small"}


def refuse(path: str, why: str) -> ConfigError:
    """The error for a field that has no blockzoo equivalent (yet)."""
    return ConfigError(f"{path}: {why}")


def _activation(value: Any, path: str) -> str:
    key = getattr(value, "value", value)
    if key not in ACTIVATIONS:
        raise ConfigError(f"{path}={value!r}: unknown activation{schema.close_matches(str(key), [a for a in ACTIVATIONS if a])}")
    return ACTIVATIONS[key]


def map_feedforward(ff: Any, path: str, dim_model: int) -> dict[str, Any]:
    """xFormers' feedforward_config -> a blockzoo feedforward config."""
    name = schema.choice(schema.check_keys(ff, ("name", "dim_model") + _ff_fields(ff), path), "name",
                         schema.FEEDFORWARD_FIELDS, path)
    if ff.get("dim_model") not in (None, dim_model):
        raise refuse(f"{path}.dim_model", f"{ff['dim_model']} differs from the block's dim_model={dim_model}")
    out = {"name": FEEDFORWARDS[name], "dropout": float(ff.get("dropout") or 0.0),
           "hidden_mult": float(ff.get("hidden_layer_multiplier") or (1 if name == "Conv2DFeedforward" else 4)),
           "activation": _activation(ff.get("activation", "gelu" if name == "Conv2DFeedforward" else None),
                                     f"{path}.activation")}
    if name == "Conv2DFeedforward":
        if ff.get("dim_model_out") not in (None, dim_model):
            raise refuse(f"{path}.dim_model_out", "an output width other than dim_model has no blockzoo equivalent")
        if ff.get("act_layer") is not None:
            raise refuse(f"{path}.act_layer", "xFormers ignored it; set activation instead")
    elif ff.get("bias") is not None:
        out["bias"] = bool(ff["bias"])
    if name == "MixtureOfExperts":
        out = _moe(ff, path, out)
    return out


def _moe(ff: dict[str, Any], path: str, mlp: dict[str, Any]) -> dict[str, Any]:
    """xFormers' MixtureOfExperts (FairScale's MOELayer, its MLP experts) -> blockzoo's moe."""
    gate = getattr(ff.get("gate"), "value", ff.get("gate"))
    if gate == "round_robin":
        raise refuse(f"{path}.gate", "the round-robin gate has no blockzoo equivalent yet (TODO(merge): round-robin "
                     "MoE gate)")
    if gate != "top_2":
        raise ConfigError(f"{path}.gate={gate!r}: expected top_2 or round_robin (a gate module is not config)")
    experts = int(ff.get("number_of_experts") or 0)
    if experts < 1:
        raise ConfigError(f"{path}.number_of_experts: required, >= 1")
    if ff.get("number_of_local_experts") not in (None, experts):
        raise refuse(f"{path}.number_of_local_experts", "experts spread over processes: blockzoo's moe holds all "
                     "of them in one module (give number_of_local_experts = number_of_experts)")
    for key in ("expert_constructor", "group"):
        if ff.get(key) is not None:
            raise refuse(f"{path}.{key}", "a callable / process group is not config")
    expert = {"name": "mlp", **{k: mlp[k] for k in ("dropout", "hidden_mult", "activation")}}
    # FairScale's Top2Gate: two experts per token, capacity 2·ceil(tokens / experts); xFormers never added its
    # l_aux to the loss, so blockzoo's load-balancing loss is off.
    return {"name": "moe", "num_experts": experts, "top_k": 2, "capacity_factor": 1.0, "aux_loss_weight": 0.0,
            "expert": expert}


def _ff_fields(ff: Any) -> tuple[str, ...]:
    return schema.FEEDFORWARD_FIELDS.get(ff.get("name"), ()) if isinstance(ff, dict) else ()


def map_position(pos: Any, path: str, dim_model: int) -> dict[str, Any] | None:
    """xFormers' position_encoding_config -> the stack's position entry."""
    if pos is None:
        return None
    fields = schema.POSITION_FIELDS.get(pos.get("name"), ()) if isinstance(pos, dict) else ()
    name = schema.choice(schema.check_keys(pos, ("name", "dim_model") + fields, path), "name",
                         schema.POSITION_FIELDS, path)
    out: dict[str, Any] = {"name": name, "seq_len": int(pos.get("seq_len") or 0)}
    if pos.get("dim_model") not in (None, dim_model):  # xFormers' embedding_projector maps it to dim_model
        out["dim"] = int(pos["dim_model"])
    if name == "vocab":
        out.update(vocab_size=int(pos["vocab_size"]), dropout=float(pos.get("dropout") or 0.0))
    if name == "learnable":
        out["add_class_token"] = bool(pos.get("add_class_token") or False)
    if name != "sine" and out["seq_len"] < 1:
        raise ConfigError(f"{path}.seq_len: required for the {name!r} encoding")
    return out


def _multi_head(mh: Any, path: str, dim_model: int) -> dict[str, Any]:
    schema.check_keys(mh, schema.MULTI_HEAD_FIELDS, path)
    for key in ("in_proj_container", "out_proj"):
        if mh.get(key) is not None:
            raise refuse(f"{path}.{key}", "a module object has no config equivalent; give the weights in state_dict")
    if mh.get("use_separate_proj_weight") is False:
        raise refuse(f"{path}.use_separate_proj_weight", "q/k/v projections sharing one weight have no blockzoo "
                     "equivalent")
    if mh.get("dim_value") not in (None, dim_model):
        raise refuse(f"{path}.dim_value", f"{mh['dim_value']}: xFormers' output projection took dim_model={dim_model} "
                     "inputs, so only dim_value == dim_model ran (a custom out_proj is a module, not config)")
    dim_key = mh.get("dim_key") or dim_model
    if mh.get("dim_model") not in (None, dim_model):
        raise refuse(f"{path}.dim_model", f"{mh['dim_model']} differs from the block's dim_model={dim_model}")
    if "num_heads" not in mh:
        raise ConfigError(f"{path}.num_heads: missing")
    bias = mh.get("bias", True)
    if isinstance(bias, (list, tuple)):
        if len(set(bias)) != 1:
            raise refuse(f"{path}.bias", f"per-projection biases {bias} have no blockzoo equivalent (one bias flag)")
        bias = bias[0]
    heads = int(mh["num_heads"])
    att_path = f"{path}.attention"
    if "attention" not in mh:
        raise ConfigError(f"{att_path}: missing")
    attention, causal = map_attention(mh["attention"], att_path, heads, dim_model)
    projections = PROJECTIONS.get(attention["name"], "in_out")
    return {"num_heads": heads, "projections": projections, "dim_key": None if dim_key == dim_model else int(dim_key),
            "bias": bool(bias), "rotary": bool(mh.get("use_rotary_embeddings") or False),
            "residual_dropout": float(mh.get("residual_dropout") or 0.0), "attention": attention, "causal": causal,
            "max_seq_len": int(mh["attention"].get("seq_len") or 0)}


def map_block(block: Any, path: str) -> tuple[int, dict[str, Any]]:
    """One xFormers block config -> (dim_model, one blockzoo stack entry)."""
    kind = schema.choice(block if isinstance(block, dict) else {}, "block_type",
                         {"encoder": 0, "decoder": 0}, path) if isinstance(block, dict) else None
    if kind is None:
        raise ConfigError(f"{path}: expected a mapping, got {type(block).__name__}")
    schema.check_keys(block, schema.ENCODER_FIELDS if kind == "encoder" else schema.DECODER_FIELDS, path)
    if "dim_model" not in block:
        raise ConfigError(f"{path}.dim_model: missing")
    d = int(block["dim_model"])
    style = block.get("residual_norm_style")
    legacy = block.get("layer_norm_style")
    if style is not None and legacy is not None and style != legacy:
        raise ConfigError(f"{path}.layer_norm_style={legacy!r} contradicts residual_norm_style={style!r}")
    style = getattr(style or legacy or "post", "value", style or legacy or "post")
    if style not in RESIDUALS:
        key = "residual_norm_style" if block.get("residual_norm_style") is not None else "layer_norm_style"
        raise ConfigError(f"{path}.{key}={style!r}: expected pre, post or deepnorm{schema.close_matches(style, list(RESIDUALS))}")
    norm = getattr(block.get("normalization") or "layernorm", "value", block.get("normalization") or "layernorm")
    if norm not in NORMS:
        raise ConfigError(f"{path}.normalization={norm!r}: expected layernorm or skip{schema.close_matches(str(norm), list(NORMS))}")
    for key in ("patch_embedding_config", "layer_position"):
        if block.get(key) is not None:
            raise refuse(f"{path}.{key}", "no blockzoo equivalent yet")
    stack: dict[str, Any] = {"kind": kind, "num_layers": int(block.get("num_layers", 1)), "residual": style,
                             "norm": NORMS[norm], "reversible": bool(block.get("reversible") or False),
                             "position": map_position(block.get("position_encoding_config"),
                                                      f"{path}.position_encoding_config", d)}
    if "feedforward_config" not in block:
        raise ConfigError(f"{path}.feedforward_config: missing")
    stack["simplicial"] = _simplicial(block.get("simplicial_embeddings"), f"{path}.simplicial_embeddings")
    stack["feedforward"] = map_feedforward(block["feedforward_config"], f"{path}.feedforward_config", d)
    if kind == "encoder":
        if "multi_head_config" not in block:
            raise ConfigError(f"{path}.multi_head_config: missing")
        stack.update(_multi_head(block["multi_head_config"], f"{path}.multi_head_config", d))
    else:
        for key in ("multi_head_config_masked", "multi_head_config_cross"):
            if key not in block:
                raise ConfigError(f"{path}.{key}: missing")
        stack.update(_multi_head(block["multi_head_config_masked"], f"{path}.multi_head_config_masked", d))
        cross = _multi_head(block["multi_head_config_cross"], f"{path}.multi_head_config_cross", d)
        cpath = f"{path}.multi_head_config_cross"
        for key in ("num_heads", "bias", "residual_dropout", "dim_key"):  # one per blockzoo decoder block
            if cross[key] != stack[key]:
                raise refuse(f"{cpath}.{key}", f"{cross[key]!r} differs from multi_head_config_masked.{key}="
                             f"{stack[key]!r}; a blockzoo decoder block shares it")
        if cross["rotary"]:
            raise refuse(f"{cpath}.use_rotary_embeddings", "rotary cross-attention has no blockzoo equivalent")
        if cross["causal"]:
            raise refuse(f"{cpath}.attention.causal", "causal cross-attention has no blockzoo equivalent")
        if cross["projections"] != "in_out":
            raise refuse(f"{cpath}.attention.name", f"{cross['attention']['name']!r} mixes one sequence's tokens; "
                         "it cannot cross-attend (xFormers required the same query and key lengths)")
        stack["cross_attention"] = cross["attention"]
        if stack["reversible"]:
            raise refuse(f"{path}.reversible", "xFormers' decoder blocks were never reversible")
    if stack["reversible"] and (stack["position"] or {}).get("dim"):
        raise refuse(f"{path}.position_encoding_config.dim_model", "xFormers' reversible stack kept the position "
                     "encoding but dropped the embedding projector, so this model could not run there")
    if stack["reversible"] and style != "pre":
        raise refuse(f"{path}.reversible", f"a reversible stack with residual_norm_style={style!r}: blockzoo's "
                     "reversible blocks are pre-norm")
    return d, stack


def _simplicial(spec: Any, path: str) -> dict[str, Any] | None:
    """xFormers' simplicial_embeddings ({L, temperature}) -> the stack's ``simplicial`` entry."""
    if spec is None:
        return None
    schema.check_keys(spec, ("L", "temperature"), path)
    if "L" not in spec:
        raise ConfigError(f"{path}.L: missing (the number of simplices)")
    temperature = spec.get("temperature")
    return {"L": int(spec["L"]), "temperature": None if temperature is None else float(temperature)}


def _check_simplicial(stacks: list[dict[str, Any]]) -> None:
    """xFormers 0.0.20 built the simplicial embedding only in the model's last block, and only when the last stack
    was a one-layer, non-reversible encoder (its layer-position flag); anywhere else it never ran."""
    for i, s in enumerate(stacks):
        runs = i == len(stacks) - 1 and s["kind"] == "encoder" and s["num_layers"] == 1 and not s["reversible"]
        if s.get("simplicial") is not None and not runs:
            raise refuse(f"block_configs[{i}].simplicial_embeddings", "xFormers 0.0.20 ran it only when this is the "
                         "last stack, an encoder of num_layers 1, not reversible; here it never ran: remove it")


def to_blockzoo(config: Any) -> dict[str, Any]:
    """The blockzoo ``xformers_stack`` model config equivalent to an xFormers config (list, dict or file)."""
    blocks, top = schema.load_config(config)
    mapped = [map_block(b, f"block_configs[{i}]") for i, b in enumerate(blocks)]
    dims = {d for d, _ in mapped}
    if len(dims) > 1:
        raise refuse("block_configs[*].dim_model", f"stacks of different widths {sorted(dims)}: xFormers projected "
                     "nothing between stacks (its embedding projector sat after a position encoding only), so such "
                     "a model could not run there")
    stacks = [s for _, s in mapped]
    _check_simplicial(stacks)
    styles = {s["residual"] == "deepnorm" for s in stacks}
    if len(styles) > 1:
        raise ConfigError("block_configs[*].residual_norm_style: xFormers needs deepnorm on every stack or none")
    init = str(getattr(top.get("weight_init", "vit"), "value", top.get("weight_init", "vit")))
    if init not in WEIGHT_INITS:
        raise ConfigError(f"config.weight_init={init!r}: expected one of {', '.join(WEIGHT_INITS)}"
                          f"{schema.close_matches(init, list(WEIGHT_INITS))}")
    first = stacks[0]
    vocab = next((s["position"]["vocab_size"] for s in stacks if s["position"] and s["position"]["name"] == "vocab"), 1)
    seq = max([s["position"]["seq_len"] for s in stacks if s["position"]] + [1])
    return {"name": "xformers_stack", "dim_model": dims.pop(), "num_layers": sum(s["num_layers"] for s in stacks),
            "num_heads": first["num_heads"], "vocab_size": vocab, "max_seq_len": seq,
            "tie_embeddings": bool(top.get("tie_embedding_weights", False)), "init": WEIGHT_INITS[init],
            "residual": first["residual"], "stacks": stacks}
