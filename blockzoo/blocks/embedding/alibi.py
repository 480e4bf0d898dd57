"""Token embedding for ALiBi models (Press et al., 2022, "Train Short, Test Long: Attention with Linear Biases")."""
from __future__ import annotations

from dataclasses import dataclass

from blockzoo.blocks.embedding.token import TokenEmbedding
from blockzoo.config import EmbeddingConfig
from blockzoo.registry import register_embedding


@dataclass
class AlibiEmbeddingConfig(EmbeddingConfig):
    """Config of the ALiBi token embedding (tokens only; ``max_seq_len`` only bounds the input)."""


@register_embedding("alibi", AlibiEmbeddingConfig)
class AlibiEmbedding(TokenEmbedding):
    """Token table with no absolute position term: ALiBi adds position inside attention instead.

    Pair it with ``attention=alibi``, whose per-head linear distance biases are the model's only
    position signal; with any other mechanism the model sees no order at all. No weight depends
    on ``max_seq_len``, so trained weights load into a config with a larger one and run on longer
    sequences than they were trained on (the paper's "train short, test long").
    """
