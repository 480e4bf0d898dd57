"""Models: decoder-only LM, encoder classifier and encoder-decoder, built from one config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo import ops
from blockzoo.blocks import generation
from blockzoo.blocks.aux_loss import auxiliary_losses
from blockzoo.blocks.block import deepnorm_constants
from blockzoo.blocks.documents import check_packable, packed_inputs
from blockzoo.blocks.embedding.rotary_scaling import rotary_options
from blockzoo.blocks.init import init_weights
from blockzoo.blocks.kv_cache import KVCache
from blockzoo.config import NON_NEGATIVE, ModelConfig, config_to_dict
from blockzoo.layer_pattern import Stack, check_causal, model_stacks, stacks_lines
from blockzoo.registry import register_model, registry

PART_DEFAULTS = {"attention": "scaled_dot_product", "feedforward": "mlp", "norm": "layer_norm", "embedding": "vocab"}
IGNORE_INDEX = -100


def layer_kwargs(padding: torch.Tensor | None, positions: torch.Tensor | None, cache: KVCache | None,
                 i: int) -> dict[str, Any]:
    """A block's keyword arguments: only those given (blocks of plugins may not take positions or a cache)."""
    kwargs: dict[str, Any] = {}
    if padding is not None:
        kwargs["key_padding_mask"] = padding
    if positions is not None:
        kwargs["positions"] = positions
    if cache is not None:
        kwargs["cache"] = cache[i]
    return kwargs


def refuse_packed_with(**given: Any) -> None:
    """Raise ValueError when packed documents (doc_ids / cu_seqlens) come with any of ``given`` that is set:
    a packed row brings its own mask and positions, and the key/value cache does not track documents."""
    clash = [name for name, value in given.items() if value is not None]
    if clash:
        raise ValueError(f"packed documents (doc_ids / cu_seqlens) cannot be combined with {', '.join(clash)}: "
                         "the key/value cache and generation run one document per row (drop doc_ids, or "
                         "run the packed batch without a cache)")


class TransformerModel(nn.Module):
    """Base of every model: embedding, block stacks, weight init, config round trip and loss."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        for part, default in PART_DEFAULTS.items():
            if getattr(cfg, part) is None:
                setattr(cfg, part, {"name": default})
        if cfg.dim_model % cfg.num_heads:
            raise ValueError(f"model.num_heads={cfg.num_heads} must divide model.dim_model={cfg.dim_model}")
        if cfg.vocab_size < 1:
            raise ValueError(f"model.vocab_size must be >= 1, got {cfg.vocab_size}")
        self.embedding = registry("embedding").build(
            cfg.embedding, path="model.embedding", vocab_size=cfg.vocab_size, dim_model=cfg.dim_model,
            max_seq_len=cfg.max_seq_len, dropout=cfg.dropout)
        self.deepnorm_alpha, self.deepnorm_beta = deepnorm_constants(*self.deepnorm_depths())
        self.stacks = model_stacks(config_to_dict(cfg))
        for stack in self.stacks.values():  # saved resolved: the checkpoint rebuilds these layers whatever the presets
            if stack is not None:
                setattr(cfg, stack.key, [layer.as_entry() for layer in stack.period])

    def deepnorm_depths(self) -> tuple[int, int]:
        return self.cfg.num_layers, 0

    generation: str | None = None  # "lm" (generate after a prompt), "seq2seq" (generate from a source), None

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Only models with a language-model head generate."""
        raise ValueError(f"model {getattr(self.cfg, 'name', type(self).__name__)!r} has no language-model head: "
                         "generate needs a decoder_lm or an encoder_decoder")

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        return self.embedding(tokens) if positions is None else self.embedding(tokens, positions)

    def make_cache(self, batch: int, max_len: int, *, dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None, static: bool = False) -> KVCache:
        """A key/value cache for ``batch`` sequences of up to ``max_len`` tokens (``generate(cache=...)``)."""
        param = next(self.parameters())
        return KVCache(self.decoding_blocks(), batch, max_len, dtype or param.dtype, device or param.device, static)

    def decodes_with_cache(self) -> bool:
        """Whether ``generate`` can use a key/value cache (every causal self-attention layer supports decoding)."""
        try:
            blocks = self.decoding_blocks()
        except ValueError:
            return False
        return all(getattr(b, "self_attn", None) is not None and b.self_attn.causal
                   and getattr(b.self_attn.attention, "supports_decoding", False) for b in blocks)

    def decoding_blocks(self) -> nn.ModuleList:
        raise ValueError(f"model {getattr(self.cfg, 'name', type(self).__name__)!r} has no causal decoder to cache")

    def make_blocks(self, kind: str, count: int, causal: bool, extra: dict[str, Any] | None = None,
                    stack: str = "layers") -> nn.ModuleList:
        """``count`` blocks of ``kind``, each with its layer's attention and feedforward from the pattern of
        ``self.stacks[stack]`` (every block the model's own parts when it has none)."""
        cfg = self.cfg
        pattern: Stack | None = self.stacks.get(stack)
        layers = [(cfg.attention, cfg.feedforward)] * count if pattern is None else [
            (layer.attention, layer.feedforward) for layer in pattern.layers]
        if pattern is not None and pattern.count != count:
            raise ValueError(f"model.{pattern.key}: the stack {stack!r} has {pattern.count} layers, not {count}")
        if pattern is not None and causal:
            check_causal(pattern.period, f"model.{pattern.key}")
        base = dict(name=kind, dim_model=cfg.dim_model, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                    residual=cfg.residual, dropout=cfg.dropout, qkv=cfg.qkv, bias=cfg.bias,
                    rotary=bool(getattr(self.embedding, "uses_rotary", False)),
                    rotary_base=float(getattr(self.embedding.cfg, "base", 10000.0)),
                    rotary_options=rotary_options(self.embedding.cfg, cfg.max_seq_len), causal=causal,
                    deepnorm_alpha=self.deepnorm_alpha, max_seq_len=cfg.max_seq_len, norm=cfg.norm, **(extra or {}))
        return nn.ModuleList(registry("block").build({**base, "attention": attention, "feedforward": feedforward},
                                                     path=f"model.blocks.{i}")
                             for i, (attention, feedforward) in enumerate(layers))

    def layer_lines(self) -> list[str]:
        """Each stack's per-layer pattern in words (none when every block is the same)."""
        return stacks_lines(self.stacks)

    def final_norm(self) -> nn.Module:
        if self.cfg.residual != "pre":
            return nn.Identity()  # post-norm and DeepNorm already end every block with a norm
        return registry("norm").build(self.cfg.norm, path="model.norm", dim=self.cfg.dim_model)

    def init(self) -> None:
        layers = sum(self.deepnorm_depths())
        init_weights(self, self.cfg.init, layers, self.cfg.dim_model, self.deepnorm_beta)

    # -- config round trip -------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """The plain-dict config that rebuilds this model (``build_model(model.to_config())``)."""
        return config_to_dict(self.cfg)

    # -- losses --------------------------------------------------------------------------------
    @staticmethod
    def require(batch: dict[str, torch.Tensor], *keys: str, model: str) -> None:
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(f"model {model!r} needs batch keys {keys}; this task's batches have "
                             f"{sorted(batch)} (missing {missing})")


@dataclass
class DecoderLMConfig(ModelConfig):
    """Config of a decoder-only language model."""


@register_model("decoder_lm", DecoderLMConfig)
class DecoderLM(TransformerModel):
    """Decoder-only LM (GPT): embedding, causal blocks, final norm, (tied) LM head.

    ``loss`` uses ``fused_linear_cross_entropy`` so the full logits are never held.
    """

    def __init__(self, cfg: DecoderLMConfig):
        super().__init__(cfg)
        self.blocks = self.make_blocks("decoder_only", cfg.num_layers, causal=True)
        self.norm = self.final_norm()
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.dim_model, cfg.vocab_size, bias=False)
        self.init()

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embedding.token.weight if self.head is None else self.head.weight

    def check_packable(self) -> None:
        """Raise ValueError naming the attention when this model cannot run packed documents."""
        check_packable(self.blocks, "decoder_lm")

    def hidden(self, tokens: torch.Tensor, doc_ids: torch.Tensor | ops.DocumentMask | None = None,
               cu_seqlens: torch.Tensor | None = None, *, positions: torch.Tensor | None = None,
               padding: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """tokens (B, L) -> final hidden states (B, L, d). Packed documents: ``doc_ids`` (B, L) or the row's
        ``cu_seqlens``; attention stays inside each document and positions restart at each start (an
        ``ops.DocumentMask`` as ``doc_ids`` reuses the structures it has built). Otherwise ``positions``
        (B, L) / (L,) int (None: arange(L)), ``padding`` (B, L) bool (True = pad) and ``cache``
        (``make_cache``) as in ``forward``."""
        if doc_ids is None and cu_seqlens is None:
            x = self.embed(tokens, positions)
            for i, block in enumerate(self.blocks):
                x = block(x, **layer_kwargs(padding, positions, cache, i))
            return self.norm(x)
        refuse_packed_with(cache=cache, positions=positions, padding=padding)
        self.check_packable()
        mask, positions = packed_inputs(tokens, doc_ids, cu_seqlens)
        x = self.embedding(tokens, positions=positions)
        for block in self.blocks:
            x = block(x, mask=mask, positions=positions)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, doc_ids: torch.Tensor | ops.DocumentMask | None = None,
                cu_seqlens: torch.Tensor | None = None, *, positions: torch.Tensor | None = None,
                padding: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """tokens (B, L) -> logits (B, L, vocab); ``doc_ids`` / ``cu_seqlens``: packed documents (see ``hidden``).
        ``positions`` (B, L) int64 (None: arange(L)); ``padding`` (B, L) bool, True = pad; ``cache``
        (``make_cache``): attend to earlier calls' tokens, then advance it (not with packed documents)."""
        logits = F.linear(self.hidden(tokens, doc_ids, cu_seqlens, positions=positions, padding=padding,
                                      cache=cache), self.head_weight)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return logits

    def decoding_blocks(self) -> nn.ModuleList:
        return self.blocks

    def last_logits(self, tokens: torch.Tensor, positions: torch.Tensor | None, padding: torch.Tensor | None,
                    cache: KVCache | None) -> torch.Tensor:
        """(B, vocab) logits of the last position (the cache is not advanced)."""
        h = self.hidden(tokens, positions=positions, padding=padding, cache=cache)
        return F.linear(h[:, -1], self.head_weight)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token cross-entropy over ``batch['targets']`` (-100 = ignored); ``batch['doc_ids']``, when
        present, marks packed documents."""
        self.require(batch, "tokens", "targets", model="decoder_lm")
        packed = {"doc_ids": batch["doc_ids"]} if "doc_ids" in batch else {}  # subclasses may not take it
        h = self.hidden(batch["tokens"], **packed)
        return ops.fused_linear_cross_entropy(h.flatten(0, 1), self.head_weight, batch["targets"].flatten(),
                                              ignore_index=IGNORE_INDEX) + auxiliary_losses(self)

    def predictions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted tokens, targets) for accuracy."""
        packed = {"doc_ids": batch["doc_ids"]} if "doc_ids" in batch else {}
        return self(batch["tokens"], **packed).argmax(-1), batch["targets"]

    generation = "lm"

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor | list[list[int]], max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 eos_token: int | None = None, pad_token: int | None = None,
                 generator: torch.Generator | None = None, padding: torch.Tensor | None = None,
                 compile: bool = False, use_cache: bool = True, cache: KVCache | None = None,
                 on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """Up to ``max_new_tokens`` tokens after ``prompt``: (B, P + n), the prompt first.

        ``prompt`` (B, P) with ``padding`` (B, P) bool (True = pad, left padding) or a list of token lists
        (left-padded here). ``temperature=0`` is greedy; ``top_k``/``top_p``/``min_p``/``repetition_penalty``
        shape the distribution; a sequence stops at ``eos_token`` (``pad_token``, default eos, after it).
        A key/value cache (static when ``compile=True``: the decode step runs under
        ``torch.compile(mode="reduce-overhead")``) makes each new token cost O(context);
        ``use_cache=False`` re-runs the whole window per token. ``on_token`` gets each new (B,) column.
        """
        return generation.generate(
            self, self.blocks, self.last_logits, prompt, max_new_tokens, padding=padding,
            sampling=generation.Sampling(temperature, top_k, top_p, min_p, repetition_penalty), eos_token=eos_token,
            pad_token=pad_token, generator=generator, compile=compile, use_cache=use_cache, cache=cache,
            on_token=on_token)


@dataclass
class EncoderClassifierConfig(ModelConfig):
    """Config of an encoder with a classification head."""

    num_classes: int = 0
    pool: str = "mean"


@register_model("encoder_classifier", EncoderClassifierConfig)
class EncoderClassifier(TransformerModel):
    """Bidirectional encoder, mean (or first-token) pooling over non-padding tokens, linear classifier."""

    def __init__(self, cfg: EncoderClassifierConfig):
        super().__init__(cfg)
        if cfg.num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2, got {cfg.num_classes}")
        if cfg.pool not in ("mean", "first"):
            raise ValueError(f"model.pool must be 'mean' or 'first', got {cfg.pool!r}")
        self.blocks = self.make_blocks("encoder", cfg.num_layers, causal=False)
        self.norm = self.final_norm()
        self.classifier = nn.Linear(cfg.dim_model, cfg.num_classes)
        self.init()

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L), padding (B, L) bool True = pad -> logits (B, num_classes)."""
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x, key_padding_mask=padding)
        x = self.norm(x)
        if self.cfg.pool == "first":
            return self.classifier(x[:, 0])
        keep = torch.ones_like(tokens, dtype=x.dtype) if padding is None else (~padding).to(x.dtype)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        return self.classifier(pooled)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.require(batch, "tokens", "label", model="encoder_classifier")
        return (F.cross_entropy(self(batch["tokens"], batch.get("padding")).float(), batch["label"])
                + auxiliary_losses(self))

    def predictions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self(batch["tokens"], batch.get("padding")).argmax(-1), batch["label"]


@dataclass
class EncoderDecoderConfig(ModelConfig):
    """Config of an encoder-decoder; ``num_decoder_layers`` 0 means as many as the encoder."""

    num_decoder_layers: int = field(default=0, metadata={"help": "decoder blocks (0: as many as num_layers)",
                                                         "check": NON_NEGATIVE})
    decoder_attention_pattern: Any = field(default=None, metadata={
        "help": "the decoder's per-layer pattern (null: attention_pattern, for both stacks)"})
    cross_attention: Any = None


@register_model("encoder_decoder", EncoderDecoderConfig)
class EncoderDecoder(TransformerModel):
    """Encoder-decoder (Vaswani et al., 2017): shared embedding, cross-attention, tied head."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__(cfg)
        n_dec = cfg.num_decoder_layers or cfg.num_layers
        self.encoder = self.make_blocks("encoder", cfg.num_layers, causal=False, stack="encoder")
        self.decoder = self.make_blocks("decoder", n_dec, causal=True, extra={"cross_attention": cfg.cross_attention},
                                        stack="decoder")
        self.enc_norm = self.final_norm()
        self.dec_norm = self.final_norm()
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.dim_model, cfg.vocab_size, bias=False)
        self.init()

    def deepnorm_depths(self) -> tuple[int, int]:
        cfg = self.cfg
        return cfg.num_layers, cfg.num_decoder_layers or cfg.num_layers

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embedding.token.weight if self.head is None else self.head.weight

    def encode(self, src: torch.Tensor, src_padding: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder output (B, S, d)."""
        memory = self.embedding(src)
        for block in self.encoder:
            memory = block(memory, key_padding_mask=src_padding)
        return self.enc_norm(memory)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor | None, src_padding: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, padding: torch.Tensor | None = None,
               cache: KVCache | None = None) -> torch.Tensor:
        """The decoder output (B, L, d) over the encoder's ``memory`` (kept in ``cache`` after its first use)."""
        x = self.embed(tgt, positions)
        for i, block in enumerate(self.decoder):
            x = block(x, memory=memory, memory_key_padding_mask=src_padding,
                      **layer_kwargs(padding, positions, cache, i))
        return self.dec_norm(x)

    def hidden(self, src: torch.Tensor, tgt: torch.Tensor, src_padding: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(tgt, self.encode(src, src_padding), src_padding)

    def decoding_blocks(self) -> nn.ModuleList:
        return self.decoder

    generation = "seq2seq"

    @torch.no_grad()
    def generate(self, src: torch.Tensor, max_new_tokens: int, *, src_padding: torch.Tensor | None = None,
                 prompt: torch.Tensor | None = None, start_token: int = 1, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 eos_token: int | None = None, pad_token: int | None = None,
                 generator: torch.Generator | None = None, padding: torch.Tensor | None = None,
                 compile: bool = False, use_cache: bool = True, cache: KVCache | None = None,
                 on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """Decoder tokens for ``src`` (B, S): ``prompt`` (B, P) (default: one ``start_token`` per sequence, the
        seq2seq tasks' separator) then up to ``max_new_tokens``; options as ``DecoderLM.generate``. The encoder
        runs once and each decoder layer projects its output to cross-attention keys/values once."""
        generation.check_prompt(src, src_padding, self.cfg.vocab_size, arg="src", padding_arg="src_padding",
                                left=False)
        if prompt is None:
            prompt = torch.full((src.shape[0], 1), start_token, dtype=torch.int64, device=src.device)
        memory = self.encode(src, src_padding)

        def last_logits(tgt: torch.Tensor, positions: torch.Tensor | None, pad: torch.Tensor | None,
                        cache: KVCache | None) -> torch.Tensor:
            if cache is not None:
                cache.context_padding = src_padding
            h = self.decode(tgt, memory, src_padding, positions, pad, cache)
            return F.linear(h[:, -1], self.head_weight)

        return generation.generate(
            self, self.decoder, last_logits, prompt, max_new_tokens, padding=padding,
            sampling=generation.Sampling(temperature, top_k, top_p, min_p, repetition_penalty), eos_token=eos_token,
            pad_token=pad_token, generator=generator, compile=compile, use_cache=use_cache, cache=cache,
            on_token=on_token, step_logits=self.step_logits)

    def step_logits(self, tgt: torch.Tensor, positions: torch.Tensor, padding: None, cache: KVCache) -> torch.Tensor:
        """(B, vocab) logits of new decoder tokens over a filled cache (encoder keys/values in it)."""
        h = self.decode(tgt, None, cache.context_padding, positions, padding, cache)
        return F.linear(h[:, -1], self.head_weight)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_padding: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S), tgt (B, L) -> logits (B, L, vocab)."""
        return F.linear(self.hidden(src, tgt, src_padding), self.head_weight)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.require(batch, "src", "tgt", "tgt_targets", model="encoder_decoder")
        h = self.hidden(batch["src"], batch["tgt"], batch.get("src_padding"))
        return ops.fused_linear_cross_entropy(h.flatten(0, 1), self.head_weight, batch["tgt_targets"].flatten(),
                                              ignore_index=IGNORE_INDEX) + auxiliary_losses(self)

    def predictions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self(batch["src"], batch["tgt"], batch.get("src_padding")).argmax(-1), batch["tgt_targets"]
