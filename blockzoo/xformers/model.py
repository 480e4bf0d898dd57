"""``xformers_stack``: the model an xFormers ``xFormer.from_config`` built, out of blockzoo's components.

Its config (``stacks``: one entry per xFormers block config) is what ``python -m blockzoo.migrate
xformers`` writes; ``blockzoo.from_xformers`` builds it and loads an xFormers state_dict into it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from blockzoo.blocks.block import deepnorm_constants
from blockzoo.blocks.embedding.token import sinusoid
from blockzoo.blocks.init import init_weights
from blockzoo.blocks.reversible import reversible_stack
from blockzoo.blocks.projection import EmbeddingProjection
from blockzoo.blocks.simplicial import SimplicialEmbedding
from blockzoo.config import (AT_LEAST_1, NON_NEGATIVE, PROBABILITY, RESIDUALS, ModelConfig, _f, config_to_dict, one_of,
                             validate_config)
from blockzoo.registry import register_model, registry


QUERY_ONLY = ("fourier_mix", "pooling", "visual")  # mechanisms xFormers ran on the queries alone


@dataclass
class XFormersStackEntry:
    """One xFormers block config: ``num_layers`` identical encoder or decoder blocks."""

    kind: str = _f("encoder", "encoder or decoder (masked self-attention + cross-attention)",
                   one_of("encoder", "decoder"))
    num_layers: int = _f(1, "blocks in this stack", AT_LEAST_1)
    residual: str = _f("post", "pre, post or deepnorm (xFormers' residual_norm_style)", one_of(*RESIDUALS))
    norm: str = _f("layer_norm", "layer_norm or skip (xFormers' normalization)", one_of("layer_norm", "skip"))
    reversible: bool = _f(False, "reversible encoder stack (pre-norm)")
    position: Optional[dict] = _f(None, "sine / vocab / learnable position encoding of the stack's input")
    num_heads: int = _f(1, "attention heads", AT_LEAST_1)
    bias: bool = _f(True, "bias in the q/k/v/out projections")
    rotary: bool = _f(False, "rotary embedding of q and k (use_rotary_embeddings)")
    residual_dropout: float = _f(0.0, "dropout after the attention output projection", PROBABILITY)
    projections: str = _f("in_out", "self-attention projections: in_out, out or none (xFormers' fourier_mix: out; "
                          "pooling, visual: none)", one_of("in_out", "out", "none"))
    dim_key: Optional[int] = _f(None, "total width of the q/k projections (None = dim_model)")
    dim_value: Optional[int] = _f(None, "total width of the v projection (None = dim_model)")
    causal: bool = _f(False, "causal self-attention")
    max_seq_len: int = _f(0, "sequence length the attention is sized for (its seq_len)", NON_NEGATIVE)
    simplicial: Optional[dict] = _f(None, "simplicial embedding {L, temperature} after the stack (last stack only)")
    attention: Any = None
    cross_attention: Any = None
    feedforward: Any = None


@dataclass
class XFormersStackConfig(ModelConfig):
    """Config of an xFormers-era model: encoder stacks, then decoder stacks (see ``blockzoo.from_xformers``)."""

    stacks: list = field(default_factory=list, metadata={"help": "one entry per xFormers block config"})


class Position(nn.Module):
    """xFormers' position encodings: vocab (token + learned position), sine and learnable (added to a (B, L, d) input)."""

    def __init__(self, spec: dict[str, Any], dim_model: int):
        super().__init__()
        width = int(spec.get("dim") or dim_model)
        self.name, self.dim_model = spec["name"], width
        # xFormers' embedding_projector: a Linear from the encoding's width to the model's, when they differ
        self.projector = EmbeddingProjection(width, dim_model) if width != dim_model else None
        dim_model = width
        if self.name == "vocab":
            self.embedding = registry("embedding").build(
                {"name": "vocab", "dropout": spec.get("dropout", 0.0)}, path="model.stacks.position",
                vocab_size=spec["vocab_size"], dim_model=dim_model, max_seq_len=spec["seq_len"])
        elif self.name == "learnable":
            extra = int(bool(spec.get("add_class_token")))
            self.pos_emb = nn.Parameter(torch.randn(1, spec["seq_len"] + extra, dim_model) * 0.02)
            self.class_token = nn.Parameter(torch.zeros(dim_model)) if extra else None
        elif self.name != "sine":
            raise ValueError(f"model.stacks.position.name={self.name!r}: expected vocab, sine or learnable")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._encode(x)
        return self.projector(x) if self.projector is not None else x

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "vocab":
            return self.embedding(x)
        if x.dim() != 3 or not x.is_floating_point():
            raise ValueError(f"a {self.name!r} position encoding adds to embedded inputs (B, L, {self.dim_model}), "
                             f"got {tuple(x.shape)} {x.dtype}")
        if self.name == "sine":
            return x + sinusoid(x.shape[1], self.dim_model, x.device).to(x.dtype)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        return x + self.pos_emb.to(x.dtype)


def _block(entry: XFormersStackEntry, dim_model: int, max_seq_len: int, path: str) -> nn.Module:
    alpha = deepnorm_constants(entry.num_layers)[0] if entry.residual == "deepnorm" else 1.0
    kind = "reversible" if entry.reversible else entry.kind
    return registry("block").build(dict(
        name=kind, dim_model=dim_model, num_heads=entry.num_heads, qkv="separate", bias=entry.bias,
        rotary=entry.rotary, causal=entry.causal, residual=entry.residual, deepnorm_alpha=alpha,
        dropout=entry.residual_dropout if entry.reversible else 0.0, max_seq_len=entry.max_seq_len or max_seq_len, attention=entry.attention,
        feedforward=entry.feedforward, norm={"name": entry.norm}, cross_attention=entry.cross_attention,
        projections=entry.projections, dim_key=entry.dim_key, dim_value=entry.dim_value), path=path)


@register_model("xformers_stack", XFormersStackConfig)
class XFormersStack(nn.Module):
    """Encoder blocks then decoder blocks as xFormers' ``xFormer`` ran them; forward(src, tgt=None) like it.

    Returns the encoder output (B, L, d) when there are no decoders, else the decoder output.
    """

    def __init__(self, cfg: XFormersStackConfig):
        super().__init__()
        self.cfg = cfg
        entries = [validate_config(XFormersStackEntry, dict(s), f"model.stacks.{i}") for i, s in enumerate(cfg.stacks)]
        if not entries:
            raise ValueError("model.stacks: needs at least one stack")
        self.entries = entries
        d = cfg.dim_model
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        self.attn_dropout: dict[str, list[float]] = {"encoder": [], "decoder": []}
        self.enc_position: nn.Module | None = None
        self.dec_position: nn.Module | None = None
        for i, e in enumerate(entries):
            blocks = self.encoders if e.kind == "encoder" else self.decoders
            if e.position is not None:
                if len(blocks):
                    raise ValueError(f"model.stacks.{i}.position: only the first {e.kind} stack's position "
                                     "encoding runs (xFormers ignored this one); remove it")
                setattr(self, "enc_position" if e.kind == "encoder" else "dec_position", Position(e.position, d))
            blocks.extend(_block(e, d, cfg.max_seq_len, f"model.stacks.{i}") for _ in range(e.num_layers))
            # xFormers' residual_dropout: after the attention's output projection only (a mechanism that skipped
            # the multi-head wrapper had none); the reversible block drops both of its branches instead
            p = 0.0 if e.reversible or e.projections == "none" else e.residual_dropout
            self.attn_dropout[e.kind].extend([p] * e.num_layers)
        rev = {e.reversible for e in entries if e.kind == "encoder"}
        if len(rev) > 1:
            raise ValueError("model.stacks.*.reversible: every encoder stack or none (as in xFormers)")
        self.reversible = rev == {True}
        if cfg.tie_embeddings and self.enc_position is not None and self.dec_position is not None:
            self.enc_position = self.dec_position
        last = entries[-1]
        self.final_norm: nn.Module | None = None
        # xFormers 0.0.20 wrapped the last block of a pre-norm model in a PostNorm only when the last stack had
        # one layer (its layer-position flag, shared by a stack's blocks, was cleared by the stack's first block)
        if last.residual == "pre" and not last.reversible and last.num_layers == 1:
            name = last.norm if last.kind == "encoder" else "layer_norm"
            self.final_norm = registry("norm").build({"name": name}, path="model.final_norm", dim=d)
        self.simplicial = None
        if last.simplicial is not None:
            if last.kind != "encoder" or last.num_layers != 1 or last.reversible:
                raise ValueError(f"model.stacks.{len(entries) - 1}.simplicial: xFormers ran it only after a last "
                                 "stack that is a one-layer, non-reversible encoder")
            self.simplicial = SimplicialEmbedding(last.simplicial["L"], last.simplicial.get("temperature"))
        if any(e.simplicial is not None for e in entries[:-1]):
            raise ValueError("model.stacks.*.simplicial: only the last stack's runs (as in xFormers); remove the others")
        self.init()

    def init(self) -> None:
        deep = self.entries[0].residual == "deepnorm"
        beta = deepnorm_constants(len(self.encoders) or len(self.decoders))[1] if deep else 1.0
        init_weights(self, self.cfg.init, len(self.encoders) + len(self.decoders), self.cfg.dim_model, beta)

    def to_config(self) -> dict[str, Any]:
        """The plain-dict config that rebuilds this model."""
        return config_to_dict(self.cfg)

    def _dropped(self, attn: nn.Module, p: float):
        """``attn`` followed by dropout ``p`` in training (xFormers' residual_dropout)."""
        if not (self.training and p > 0):
            return attn
        return lambda *args, **kwargs: nn.functional.dropout(attn(*args, **kwargs), p, True)

    def _cross(self, block: nn.Module, x: torch.Tensor, memory: torch.Tensor, p: float) -> torch.Tensor:
        res, attn = block.cross_res, self._dropped(block.cross_attn, p)
        if res.layout == "pre":  # xFormers' PreNorm normalised the memory too, with the same norm
            normed = res.norm(memory)
            return res(x, lambda h: attn(h, context=normed))
        return res(x, attn, context=memory)

    def _self_attend(self, block: nn.Module, x: torch.Tensor, input_mask: torch.Tensor | None,
                     p: float) -> torch.Tensor:
        """One self-attention branch; ``input_mask`` (B, L) scales the key/value inputs (xFormers' input_mask).

        xFormers' token mixers (fourier_mix, pooling, visual) read the queries only, so the mask left them alone.
        """
        res, attn = block.attn_res, self._dropped(block.self_attn, p)
        if input_mask is None or block.self_attn.attention.cfg.name in QUERY_ONLY:
            return res(x, attn)
        if input_mask.shape != x.shape[:2]:
            raise ValueError(f"input mask: expected shape {tuple(x.shape[:2])} (batch, seq), got "
                             f"{tuple(input_mask.shape)}")
        kv = x * input_mask.unsqueeze(-1).to(x.dtype)
        if res.layout == "pre":  # xFormers' PreNorm normalised each distinct input
            return res(x, lambda h: attn(h, key=res.norm(kv)))
        return res(x, attn, key=kv)

    def _encode(self, src: torch.Tensor, input_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.enc_position(src) if self.enc_position is not None else src
        if self.reversible:
            if input_mask is not None:  # xFormers added (sic) the mask to the reversible stack's input
                x = x + input_mask.unsqueeze(-1).to(x.dtype)
            y1, y2 = reversible_stack(list(self.encoders), x, x)
            return (y1 + y2) / 2
        for block, p in zip(self.encoders, self.attn_dropout["encoder"]):
            x = self._self_attend(block, x, input_mask, p)
            x = block.ff_res(x, block.feedforward)
        return x

    def forward(self, src: torch.Tensor, tgt: torch.Tensor | None = None,
                encoder_input_mask: torch.Tensor | None = None,
                decoder_input_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, L) tokens or (B, L, d) -> (B, L, d); ``tgt`` feeds the decoders (default: src).

        ``encoder_input_mask`` / ``decoder_input_mask`` (B, L): multiply the keys' and values' inputs of every
        encoder / decoder self-attention (the queries stay), as xFormers' input masks did.
        """
        memory = self._encode(src, encoder_input_mask) if len(self.encoders) else None
        if not len(self.decoders):
            memory = self.final_norm(memory) if self.final_norm is not None else memory
            return self.simplicial(memory) if self.simplicial is not None else memory
        if memory is None:
            raise ValueError("model.stacks: decoder blocks need an encoder stack before them (xFormers had none "
                             "to give them a memory)")
        x = src if tgt is None else tgt
        x = self.dec_position(x) if self.dec_position is not None else x
        for block, p in zip(self.decoders, self.attn_dropout["decoder"]):
            x = self._self_attend(block, x, decoder_input_mask, p)
            x = self._cross(block, x, memory, p)
            x = block.ff_res(x, block.feedforward)
        return self.final_norm(x) if self.final_norm is not None else x

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token cross-entropy through the vocab encoding's (tied) token table, for blockzoo's trainer."""
        pos = self.enc_position if self.enc_position is not None else self.dec_position
        if pos is None or pos.name != "vocab":
            raise ValueError("model 'xformers_stack' trains on token tasks only with a 'vocab' position encoding")
        h = self(batch["tokens"])
        logits = h @ pos.embedding.token.weight.t()
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=-100)
