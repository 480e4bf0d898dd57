"""An xFormers (v0.0.20) model's state_dict -> an ``xformers_stack`` model's, key by key.

``convert(model, state_dict)`` returns blockzoo's state_dict; keys that match nothing, parameters
left without a value and shapes that differ raise ValueError naming them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Rule = tuple[list[str], Callable[..., torch.Tensor]]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _conv1x1(t: torch.Tensor) -> torch.Tensor:  # a 1x1 Conv2d weight as a Linear weight
    return t.reshape(t.shape[0], t.shape[1])


def _conv_swapped(t: torch.Tensor) -> torch.Tensor:  # xFormers' Conv2DFeedforward ran on a transposed grid
    return t.transpose(-1, -2).contiguous()


def _transposed(t: torch.Tensor) -> torch.Tensor:
    return t.t().contiguous()


def _cat(*ts: torch.Tensor) -> torch.Tensor:
    return torch.cat(ts, dim=0)


class KeyMap:
    """Rules bz_key -> (xFormers keys, function of their tensors)."""

    def __init__(self) -> None:
        self.rules: dict[str, Rule] = {}
        self.consumed: set[str] = set()
        self.optional: set[str] = set()  # blockzoo keys that keep their own value when the xFormers key is absent

    def add(self, bz: str, xf: str | list[str], fn: Callable[..., torch.Tensor] = _same) -> None:
        self.rules[bz] = ([xf] if isinstance(xf, str) else xf, fn)

    def affine(self, bz: str, xf: str, names: tuple[str, ...] = ("weight", "bias")) -> None:
        for n in names:
            self.add(f"{bz}.{n}", f"{xf}.{n}")


def _norm(km: KeyMap, bz: str, xf: str) -> None:
    km.affine(bz, xf)


def _attention(km: KeyMap, block: nn.Module, bz: str, xf: str, cross: bool) -> None:
    """The multi-head wrapper at ``bz`` from xFormers' MultiHeadDispatch at ``xf``."""
    proj = f"{xf}.in_proj_container"
    if block.projections != "in_out":
        pass  # xFormers had no input projection either
    elif cross:
        km.affine(f"{bz}.q_proj", f"{proj}.q_proj")
        for n in ("weight", "bias"):
            km.add(f"{bz}.kv_proj.{n}", [f"{proj}.k_proj.{n}", f"{proj}.v_proj.{n}"], _cat)
    else:
        for p in ("q_proj", "k_proj", "v_proj"):
            km.affine(f"{bz}.{p}", f"{proj}.{p}")
    if block.out_proj is not None:
        km.affine(f"{bz}.out_proj", f"{xf}.proj")
    else:  # built but never run by xFormers (the mechanism skipped the multi-head wrapper)
        km.consumed.update(f"{xf}.{p}.{n}" for n in ("weight", "bias")
                           for p in ("proj", "in_proj_container.q_proj", "in_proj_container.k_proj",
                                     "in_proj_container.v_proj"))
    km.consumed.add(f"{xf}.rotary_embeddings.inv_freq")  # recomputed (base 10000, as xFormers)
    att = getattr(block, "attention", None)
    name = getattr(getattr(att, "cfg", None), "name", "")
    if name == "linformer":
        km.add(f"{bz}.attention.proj_k", f"{xf}.attention.E.weight", _transposed)
        km.add(f"{bz}.attention.proj_v", f"{xf}.attention.F.weight", _transposed)
    elif name == "visual":
        lka = f"{xf}.attention.block.2"
        for bz_name, xf_name in (("proj_in", "attention.block.0"), ("proj_out", "attention.block.3")):
            km.affine(f"{bz}.attention.{bz_name}", f"{xf}.{xf_name}")
        for bz_name, xf_name in (("depthwise", "conv0"), ("dilated", "conv_spatial"), ("pointwise", "conv1")):
            km.affine(f"{bz}.attention.{bz_name}", f"{lka}.{xf_name}")
    elif name == "favor":  # see random_features: xFormers kept them outside its state_dict
        km.add(f"{bz}.attention.projection", f"{xf}.attention.feature_map.{FEATURES}", _transposed)
        km.optional.add(f"{bz}.attention.projection")
    elif name == "compositional_paper":
        own = f"{xf}.attention"
        for p in ("q_proj", "k_proj", "v_proj"):
            if getattr(att, p) is not None:
                km.affine(f"{bz}.attention.{p}", f"{own}.in_proj_container.{p}")
            else:  # xFormers' shared projection appears under all three names
                km.consumed.update(f"{own}.in_proj_container.{p}.{n}" for n in ("weight", "bias"))
        subs = ["value_q", "out_proj"] + (["value_k"] if att.cfg.qk_rule else
                                          ["score_network.0", "score_network.2"] if att.cfg.nonlinear
                                          else ["score_network"])
        for p in subs:
            km.affine(f"{bz}.attention.{p}", f"{own}.{p}", ("weight", "bias") if att.cfg.bias else ("weight",))
    elif name == "lambda":
        km.add(f"{bz}.attention.position", f"{xf}.attention.rel_pos_emb")
    elif name == "nystrom":
        km.affine(f"{bz}.attention.conv", f"{xf}.attention.skip_connection")  # no bias: only weight exists


def _feedforward(km: KeyMap, ff: nn.Module, bz: str, xf: str) -> None:
    name = getattr(ff.cfg, "name", "")
    if name == "mlp":
        km.affine(f"{bz}.fc1", f"{xf}.mlp.0")
        km.affine(f"{bz}.fc2", f"{xf}.mlp.3")
    elif name == "fused_mlp":  # Linear (no bias), FusedDropoutBias (its bias), Linear, FusedDropoutBias
        for fc, (lin, drop) in (("fc1", (0, 1)), ("fc2", (2, 3))):
            km.add(f"{bz}.{fc}.weight", f"{xf}.mlp.{lin}.weight")
            km.add(f"{bz}.{fc}.bias", f"{xf}.mlp.{drop}.bias")
    elif name == "moe":  # FairScale's MOELayer; xFormers registered its gate twice (gate, moe.gate)
        km.add(f"{bz}.router.weight", f"{xf}.moe.gate.wg.weight")
        km.consumed.add(f"{xf}.gate.wg.weight")
        for i, expert in enumerate(ff.experts):
            _feedforward(km, expert, f"{bz}.experts.{i}", f"{xf}.moe.experts.{i}")
    elif name == "conv2d":
        for n, fn in (("weight", _conv1x1), ("bias", _same)):
            km.add(f"{bz}.fc1.{n}", f"{xf}.conv_mlp.0.{n}", fn)
            km.add(f"{bz}.fc2.{n}", f"{xf}.conv_mlp.3.{n}", fn)
        km.add(f"{bz}.dwconv.weight", f"{xf}.conv_mlp.1.weight", _conv_swapped)
        km.add(f"{bz}.dwconv.bias", f"{xf}.conv_mlp.1.bias")


def _position(km: KeyMap, model: nn.Module, bz: str, xf: str) -> None:
    pos = getattr(model, bz)
    if pos.projector is not None:  # held by the first block, beside its pose_encoding
        km.affine(f"{bz}.projector", xf.replace("pose_encoding", "embedding_projector"))
    if pos.name == "vocab":
        km.add(f"{bz}.embedding.token.weight", f"{xf}.word_embeddings.weight")
        km.add(f"{bz}.embedding.position.weight", f"{xf}.position_embeddings.weight")
    elif pos.name == "learnable":
        km.add(f"{bz}.pos_emb", f"{xf}.pos_emb")
        if pos.class_token is not None:
            km.add(f"{bz}.class_token", f"{xf}.class_token")


def _branch(residual: str, xf: str, last_pre: bool) -> tuple[str | None, str]:
    """(norm key prefix, sublayer key prefix) of one xFormers residual wrapper at ``xf``."""
    if residual == "pre":
        inner = f"{xf}.sublayer" if last_pre else xf
        return f"{inner}.layer.norm", f"{inner}.layer.sublayer"
    return f"{xf}.norm", f"{xf}.sublayer.layer"


def key_map(model: nn.Module) -> KeyMap:
    """Every rule for ``model`` (an ``XFormersStack``)."""
    km = KeyMap()
    n_enc = len(model.encoders)
    last_kind = model.entries[-1].kind
    if model.enc_position is not None:
        _position(km, model, "enc_position", "rev_enc_pose_encoding" if model.reversible else "encoders.0.pose_encoding")
    if model.dec_position is not None:
        _position(km, model, "dec_position", "decoders.0.pose_encoding")
    for kind, blocks in (("encoder", model.encoders), ("decoder", model.decoders)):
        for i, block in enumerate(blocks):
            xf, bz = f"{kind}s.{i}", f"{kind}s.{i}"
            if kind == "encoder" and model.reversible:
                xf = f"encoders.blocks.{i}"
                _norm(km, f"{bz}.attn_res.norm", f"{xf}.f.net.norm")
                _attention(km, block.self_attn, f"{bz}.self_attn", f"{xf}.f.net.sublayer", False)
                _norm(km, f"{bz}.ff_res.norm", f"{xf}.g.net.norm")
                _feedforward(km, block.feedforward, f"{bz}.feedforward", f"{xf}.g.net.sublayer")
                continue
            residual = block.cfg.residual
            last = kind == last_kind and i == len(blocks) - 1 and model.final_norm is not None
            norm, sub = _branch(residual, f"{xf}.wrap_att", False)
            _norm(km, f"{bz}.attn_res.norm", norm)
            _attention(km, block.self_attn, f"{bz}.self_attn", sub, False)
            if kind == "decoder":
                norm, sub = _branch(residual, f"{xf}.wrap_cross", False)
                _norm(km, f"{bz}.cross_res.norm", norm)
                _attention(km, block.cross_attn, f"{bz}.cross_attn", sub, True)
            norm, sub = _branch(residual, f"{xf}.wrap_ff", last)
            _norm(km, f"{bz}.ff_res.norm", norm)
            _feedforward(km, block.feedforward, f"{bz}.feedforward", sub)
            if last:
                _norm(km, "final_norm", f"{xf}.wrap_ff.norm")
    return km


FEATURES = "features"


def random_features(xformers_model: nn.Module) -> dict[str, torch.Tensor]:
    """The random-feature matrices of an xFormers model's favor attentions, as extra state_dict entries.

    xFormers held them in a plain attribute (``feature_map.features``), drawn at the first forward
    call and absent from ``state_dict()``; ``from_xformers(config, {**sd, **random_features(model)})``
    copies them into blockzoo's ``projection`` buffers (without them blockzoo keeps its own draw).
    """
    out = {}
    for name, module in xformers_model.named_modules():
        features = getattr(module, FEATURES, None)
        if isinstance(features, torch.Tensor) and hasattr(module, "_get_feature_map"):
            out[f"{name}.{FEATURES}"] = features.detach().clone()
    return out


def convert(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` (an xFormers model's) as ``model``'s state_dict; ValueError on any mismatch."""
    km = key_map(model)
    own = model.state_dict()
    out, missing, used = {}, [], set(km.consumed)
    for key, target in own.items():
        rule = km.rules.get(key)
        if rule is None or any(x not in state_dict for x in rule[0]):
            if (rule is None and key not in dict(model.named_parameters())) or key in km.optional:
                out[key] = target  # a buffer blockzoo derives itself (e.g. rotary frequencies)
                continue
            missing.append(f"{key} <- {', '.join(rule[0]) if rule else '(no xFormers counterpart)'}")
            continue
        value = rule[1](*(state_dict[x] for x in rule[0]))
        if value.shape != target.shape:
            raise ValueError(f"state_dict: {' + '.join(rule[0])} has shape {tuple(value.shape)}, but {key} needs "
                             f"{tuple(target.shape)}")
        out[key] = value.to(target.dtype)
        used.update(rule[0])
    extra = sorted(k for k in state_dict if k not in used)
    if missing or extra:
        raise ValueError("state_dict does not match the xFormers config: "
                         + (f"missing {missing}" if missing else "")
                         + ("; " if missing and extra else "") + (f"unexpected keys {extra}" if extra else ""))
    return out
