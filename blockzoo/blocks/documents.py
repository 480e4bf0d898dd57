"""Packed documents in a model: which attentions can honour them, and the mask and positions of a packed batch.

A packed row holds several documents one after another, each token tagged with its document id
(``doc_ids`` (B, L), nondecreasing) or the row's ``cu_seqlens``. Attention then stays inside each document
(``blockzoo.ops.document_mask``) and positions restart at each document start
(``blockzoo.ops.document_positions``), so a packed row computes what each document would alone. ALiBi needs
no positions: inside a document |i - j| is the in-document distance, and pairs across documents are masked.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from blockzoo import ops


def attention_name(att: nn.Module) -> str:
    """The registered name of an attention mechanism (its class name when it has no config name)."""
    return str(getattr(getattr(att, "cfg", None), "name", type(att).__name__))


def refusal(att: nn.Module) -> str | None:
    """Why ``att`` cannot run packed documents exactly (None when it can)."""
    if not getattr(att, "supports_mask", True):
        return "it cannot honour an attention mask"
    if not getattr(att, "supports_documents", True):
        return "its pattern depends on absolute positions, so a packed document would not see what it sees alone"
    return None


def check_packable(blocks: Iterable[nn.Module], model: str, path: str = "model.attention") -> None:
    """Raise ValueError naming the attention when a block of ``blocks`` cannot run packed documents."""
    for i, block in enumerate(blocks):
        att = getattr(getattr(block, "self_attn", None), "attention", None)
        if att is None:
            raise ValueError(f"model {model!r}: block {i} ({type(block).__name__}) has no self-attention that "
                             "packed documents (doc_ids / task.pack=true) can restrict")
        why = refusal(att)
        if why is not None:
            raise ValueError(f"{path}: attention {attention_name(att)!r} cannot run packed documents (doc_ids / "
                             f"task.pack=true): {why}; use one that supports masks (e.g. scaled_dot_product, "
                             "local, alibi) or task.pack=false")


def packed_inputs(tokens: torch.Tensor, doc_ids: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                  causal: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(document keep mask (B, 1, L, L), in-document positions (B, L)) of a packed batch, or (None, None)."""
    if doc_ids is not None and isinstance(doc_ids, torch.Tensor) and doc_ids.dim() == 2:
        if doc_ids.shape[0] != tokens.shape[0]:
            raise ValueError(f"doc_ids has {doc_ids.shape[0]} rows; the tokens have {tokens.shape[0]}")
        doc_ids = doc_ids.to(tokens.device)
    if cu_seqlens is not None and isinstance(cu_seqlens, torch.Tensor):
        cu_seqlens = cu_seqlens.to(tokens.device)
    got = ops.document_inputs(doc_ids, cu_seqlens, tokens.shape[-1], causal=causal)
    if got is None:
        return None, None
    keep, positions = got  # keep (1, 1, L, L) from cu_seqlens broadcasts over the batch: analyzed once
    return keep, positions.expand(tokens.shape[0], -1)
