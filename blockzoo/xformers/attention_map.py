"""xFormers' 14 attention configs (v0.0.20) -> blockzoo attention configs, field by field."""
from __future__ import annotations

from typing import Any

from blockzoo.config import ConfigError
from blockzoo.xformers import schema

# The multi-head projections xFormers ran around each mechanism (its requires_input_projection and
# requires_skip_multi_head flags): fourier_mix saw the unprojected input split into heads and kept the
# output projection; pooling, visual and compositional (which owned its projections) skipped the multi-head
# wrapper altogether.
PROJECTIONS = {"fourier_mix": "out", "pooling": "none", "visual": "none", "compositional_paper": "none"}
SUPPORTS_CAUSAL = ("scaled_dot_product", "local", "random", "global", "nystrom", "favor", "compositional")


def _refuse(path: str, why: str) -> ConfigError:
    return ConfigError(f"{path}: {why}")


def _only_default(att: dict[str, Any], path: str, key: str, default: Any, why: str) -> None:
    if att.get(key) is not None and att[key] != default:
        raise _refuse(f"{path}.{key}", f"{att[key]!r}: {why}")


def map_attention(att: Any, path: str, num_heads: int, dim_model: int) -> tuple[dict[str, Any], bool]:
    """(blockzoo attention config, causal) for an xFormers ``attention`` sub-config."""
    fields = schema.ATTENTION_FIELDS.get(att.get("name"), ()) if isinstance(att, dict) else ()
    schema.check_keys(att, schema.ATTENTION_COMMON + fields, path)
    name = schema.choice(att, "name", schema.ATTENTION_FIELDS, path)
    causal = bool(att.get("causal") or False)
    if causal and name not in SUPPORTS_CAUSAL:
        raise _refuse(f"{path}.causal", f"xFormers' {name!r} has no causal option (it ignored the field); "
                      "set it to false")
    if att.get("num_heads") not in (None, num_heads):
        raise _refuse(f"{path}.num_heads", f"{att['num_heads']} differs from the multi-head num_heads={num_heads}")
    if att.get("dim_model") not in (None, dim_model):
        raise _refuse(f"{path}.dim_model", f"{att['dim_model']} differs from dim_model={dim_model}")
    head_dim = dim_model // num_heads
    if att.get("dim_features") not in (None, head_dim) and name != "favor":
        raise _refuse(f"{path}.dim_features", f"{att['dim_features']} differs from the head width {head_dim}")
    out: dict[str, Any] = {"name": name, "dropout": float(att.get("dropout") or 0.0)}
    seq_len = att.get("seq_len")
    if name == "scaled_dot_product":
        pass  # seq_len / to_seq_len only sized xFormers' mask cache
    elif name == "local":
        window = int(att.get("window_size") or 5)
        if window % 2 == 0:
            raise ConfigError(f"{path}.window_size={window}: xFormers needs an odd window (self + two wings)")
        out["window_size"] = 2 * window + 1 if causal else window  # xFormers doubled the window when causal
    elif name == "random":
        _only_default(att, path, "constant_masking", True, "a pattern redrawn at every call has no blockzoo "
                      "equivalent")
        out["density"] = float(att.get("r") if att.get("r") is not None else 0.01)
    elif name == "global":
        mask = att.get("attention_query_mask")
        if mask is None:
            raise ConfigError(f"{path}.attention_query_mask: required (which tokens are global)")
        flags = [bool(v) for v in (mask.flatten().tolist() if hasattr(mask, "flatten") else mask)]
        out["global_indices"] = [i for i, v in enumerate(flags) if v]
        out["num_global"] = len(out["global_indices"])
    elif name == "blocksparse":
        raise _refuse(f"{path}.layout", "a layout tensor in the config has no blockzoo config equivalent yet: "
                      "blockzoo's blocksparse takes one only in code, layout='custom' (TODO(merge): layouts in "
                      "buffers / state_dict)")
    elif name == "linformer":
        if not seq_len:
            raise ConfigError(f"{path}.seq_len: required by linformer")
        out["k"] = int(att.get("k") or int(seq_len) // 4)
    elif name == "nystrom":
        for key, default, why in (("use_razavi_pinverse", True, "only the Razavi iteration exists in blockzoo"),
                                  ("pinverse_original_init", False, "only the scaled init exists in blockzoo"),
                                  ("landmark_pooling", None, "a custom pooling module has no config equivalent"),
                                  ("v_skip_connection", None, "a custom skip module has no config equivalent")):
            _only_default(att, path, key, default, why)
        out["num_landmarks"] = int(att.get("num_landmarks") or 64)
        out["pinv_iterations"] = int(att.get("inv_iterations") or 6)
        out["conv_kernel_size"] = int(att.get("conv_kernel_size") or 0)
    elif name == "favor":
        # xFormers' factory kept only FavorAttentionConfig's fields and its constructor read `feature_map_type`,
        # which is not one of them: every config-built favor ran the default SMReg feature map (both signs of
        # w.x) without input normalisation, whatever `feature_map` / `feature_map_type` / `normalize_inputs`
        # said. The trained weights come from that model, so that is what is built here. The features are
        # redrawn every iter_before_redraw calls in training (xFormers redrew in eval too).
        # build_multi_head_attention filled a missing dim_features with the head width, so dim_head never
        # reached the constructor's own estimate.
        features = att.get("dim_features") or head_dim
        if features % 2:
            raise ConfigError(f"{path}.dim_features={features}: xFormers' SMReg feature map needs an even number")
        _only_default(att, path, "dropout", 0.0, "xFormers dropped favor's output; blockzoo's favor has no dropout "
                      "(the outputs are the same in eval mode with 0)")
        out.update(num_features=int(features), feature_map="hyperbolic",
                   redraw_interval=int(att.get("iter_before_redraw") or 0))
    elif name == "fourier_mix":
        _only_default(att, path, "dropout", 0.0, "xFormers dropped the mixed output; blockzoo's fourier_mix has no "
                      "dropout (the outputs are the same in eval mode with 0)")
        out.update(fft_norm="backward", per_head=True)  # xFormers folded the heads into the batch
    elif name == "visual":
        out.update(van_block=True, dropout=0.0)  # xFormers' visual had no dropout (it ignored the field)
    elif name == "pooling":
        _only_default(att, path, "stride", 1, "only stride 1 keeps the sequence length")
        size = int(att.get("pool_size") or 3)
        _only_default(att, path, "padding", size // 2, "only 'same' padding keeps the sequence length")
        out.update(pool_size=size, grid=True, dropout=0.0)  # xFormers' pooling ignored dropout
    elif name == "lambda":
        if att.get("dim_head") not in (None, head_dim):
            raise _refuse(f"{path}.dim_head", f"{att['dim_head']} differs from the head width {head_dim}")
        if not seq_len:
            raise ConfigError(f"{path}.seq_len: required by lambda (its relative position table)")
        out.update(key_softmax="channels", position_lambda="summed")  # what xFormers 0.0.20 computed
    elif name == "orthoformer":
        landmarks = int(att.get("num_landmarks") or 32)
        if seq_len and landmarks == int(seq_len):  # xFormers ran plain attention when every token is a landmark
            return {"name": "scaled_dot_product", "dropout": out["dropout"]}, causal
        raise _refuse(f"{path}.num_landmarks", f"{landmarks} landmarks out of seq_len={seq_len}: xFormers drew the "
                      "first landmark at random at every forward call (torch.randint, in eval too) and compared unit-"
                      "normalised queries, so its outputs are random per call and no deterministic model reproduces "
                      "them; only num_landmarks == seq_len (plain attention there) maps")
    elif name == "compositional":  # it owned its projections and skipped the multi-head wrapper's
        for key in ("in_proj_container", "q_compose"):
            _only_default(att, path, key, None if key == "in_proj_container" else False, {
                "in_proj_container": "a module object has no config equivalent; give its weights in state_dict",
                "q_compose": "xFormers reshaped its (L, B*H) retrieval queries as (B, L, H), mixing batch rows "
                             "and positions; no blockzoo model reproduces that"}[key])
        attn = int(att.get("dim_attn") or dim_model)
        if att.get("dim_key") not in (None, dim_model):
            raise _refuse(f"{path}.dim_key", f"{att['dim_key']}: xFormers split the queries into heads of "
                          f"dim_model/num_heads, so only dim_key == dim_model={dim_model} ran")
        if int(att.get("dim_value") or dim_model) != attn:
            raise _refuse(f"{path}.dim_value", f"{att.get('dim_value') or dim_model} differs from dim_attn={attn}; "
                          "xFormers split the values into num_rules slices of dim_attn/num_rules")
        out.update(name="compositional_paper", num_rules=int(att.get("num_rules") or num_heads), dim_attn=attn,
                   dim_selection=int(att.get("dim_selection") or head_dim), qk_rule=bool(att.get("qk_rule")),
                   nonlinear=bool(att.get("nonlinear")), bias=bool(att.get("bias", True)),
                   shared_projection=not att.get("use_separate_proj_weight"))
    return out, causal
