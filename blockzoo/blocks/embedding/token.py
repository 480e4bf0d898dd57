"""Token embeddings with absolute positions: learned (GPT-2), sinusoidal (Vaswani et al., 2017)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from blockzoo.config import EmbeddingConfig
from blockzoo.registry import register_embedding


class TokenEmbedding(nn.Module):
    """Base: a token table (``self.token``, tied to the LM head when asked) plus a position term."""

    uses_rotary = False

    def __init__(self, cfg: EmbeddingConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.vocab_size < 1 or cfg.dim_model < 1:
            raise ValueError(f"embedding needs vocab_size and dim_model >= 1, got {cfg.vocab_size}, {cfg.dim_model}")
        self.token = nn.Embedding(cfg.vocab_size, cfg.dim_model)
        self.drop = nn.Dropout(cfg.dropout)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be int64/int32, got {tokens.dtype}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        if self.cfg.max_seq_len and tokens.shape[1] > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds max_seq_len={self.cfg.max_seq_len}")

    def check_positions(self, tokens: torch.Tensor, positions: torch.Tensor | None) -> None:
        """``positions``: None, or int (L,) / (B, L) matching the tokens."""
        if positions is None:
            return
        if positions.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"positions must be int64/int32, got {positions.dtype}")
        if positions.shape not in (tokens.shape, tokens.shape[1:]):
            raise ValueError(f"positions must be (L,) or (B, L) like the tokens {tuple(tokens.shape)}, "
                             f"got shape {tuple(positions.shape)}")

    def positions(self, length: int, device: torch.device) -> torch.Tensor | None:
        return None

    def position_table(self, positions: torch.Tensor) -> torch.Tensor | None:
        """The position vectors gathered at int ``positions`` ((L,) or (B, L)), which may lie beyond the
        tokens' length (a decode step's absolute positions); None when there is no position term."""
        table = self.positions(int(positions.max()) + 1 if positions.numel() else 0, positions.device)
        return None if table is None else table[positions]

    def position_term(self, length: int, device: torch.device,
                      positions: torch.Tensor | None) -> torch.Tensor | None:
        """The added position vectors: (L, d) for ``arange(L)``, else gathered at ``positions`` (None: none)."""
        if positions is None:
            return self.positions(length, device)
        return self.position_table(positions)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L) -> (B, L, d); ``positions`` (B, L) or (L,) int: each token's position (e.g. inside
        its packed document, or its absolute position when decoding over a cache), default ``arange(L)``."""
        self.check_tokens(tokens)
        self.check_positions(tokens, positions)
        x = self.token(tokens)
        pos = self.position_term(tokens.shape[1], tokens.device, positions)
        if pos is not None:
            x = x + pos.to(x.dtype)
        return self.drop(x)


@dataclass
class VocabConfig(EmbeddingConfig):
    """Config of token + learned absolute position embedding."""


@register_embedding("vocab", VocabConfig)
class VocabEmbedding(TokenEmbedding):
    """Token table plus a learned absolute position table (GPT-2 style)."""

    def __init__(self, cfg: VocabConfig):
        super().__init__(cfg)
        if cfg.max_seq_len < 1:
            raise ValueError("embedding 'vocab' needs max_seq_len >= 1")
        self.position = nn.Embedding(cfg.max_seq_len, cfg.dim_model)

    def positions(self, length: int, device: torch.device) -> torch.Tensor:
        return self.position.weight[:length]

    def position_table(self, positions: torch.Tensor) -> torch.Tensor:
        return self.position(positions)


def sinusoid(length: int, dim: int, device: torch.device | None = None, base: float = 10000.0) -> torch.Tensor:
    """(length, dim) sinusoidal position table."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(base) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


def sinusoid_at(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``sinusoid`` rows at int64 ``positions`` (any shape): positions.shape + (dim,)."""
    pos = positions.to(torch.float32)[..., None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * (-math.log(base) / dim))
    table = torch.zeros(*positions.shape, dim, device=positions.device)
    table[..., 0::2] = torch.sin(pos * inv)
    table[..., 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


@dataclass
class SineConfig(EmbeddingConfig):
    """Config of token + fixed sinusoidal position embedding."""


@register_embedding("sine", SineConfig)
class SineEmbedding(TokenEmbedding):
    """Token table scaled by √d plus fixed sinusoidal positions (Vaswani et al., 2017)."""

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        self.check_tokens(tokens)
        self.check_positions(tokens, positions)
        x = self.token(tokens) * math.sqrt(self.cfg.dim_model)
        table = (sinusoid(tokens.shape[1], self.cfg.dim_model, tokens.device) if positions is None
                 else sinusoid_at(positions, self.cfg.dim_model))
        x = x + table.to(x.dtype)
        return self.drop(x)


@dataclass
class LearnableConfig(EmbeddingConfig):
    """Config of token + learnable positions initialised from the sinusoid table."""


@register_embedding("learnable", LearnableConfig)
class LearnableEmbedding(TokenEmbedding):
    """Token table plus learnable positions that start as the sinusoid table (trained from there)."""

    def __init__(self, cfg: LearnableConfig):
        super().__init__(cfg)
        if cfg.max_seq_len < 1:
            raise ValueError("embedding 'learnable' needs max_seq_len >= 1")
        self.position = nn.Parameter(sinusoid(cfg.max_seq_len, cfg.dim_model) * 0.02)

    def positions(self, length: int, device: torch.device) -> torch.Tensor:
        return self.position[:length]

    def position_table(self, positions: torch.Tensor) -> torch.Tensor:
        return self.position[positions]
