"""Mask arithmetic shared by the attention ops and components, written once.

A mask is a bool *keep* (True = keep the score) or an *additive* float tensor (``-inf`` removes a
score), broadcastable to (B, H, L, S). ``repeat_kv`` is the matching head broadcast of grouped-query
keys and values.
"""
from __future__ import annotations

import torch


def causal_keep(q_len: int, kv_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(q_len, kv_len) bool: True where j <= i."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril()


def keep_from_key_padding(key_padding_mask: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """(B, S) key-padding mask (True = padding, as in nn.MultiheadAttention) -> (B, 1, 1, S) keep."""
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")
    if tuple(key_padding_mask.shape) != (batch, seq):
        raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}; expected ({batch}, {seq})")
    return (~key_padding_mask)[:, None, None, :]


def apply_keep(mask: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` restricted to the bool ``keep`` (shapes broadcast): AND for a bool mask, ``-inf`` where
    ``keep`` is False for an additive one (its dtype and device kept). A None side gives the other."""
    if mask is None:
        return keep
    if keep is None:
        return mask
    return mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf"))


def as_4d(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` viewed with leading dims of size 1 up to 4 dims: (L, S) -> (1, 1, L, S)."""
    return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))


def repeat_kv(k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Expand (B, H_kv, S, D) to (B, num_heads, S, D) for grouped-query attention."""
    h_kv = k.shape[1]
    if h_kv == num_heads:
        return k
    return k.repeat_interleave(num_heads // h_kv, dim=1)


def position_keep(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Causal keep from absolute positions: q_pos (B, L), k_pos (B, S) (-1 = empty slot) -> (B, 1, L, S)
    bool, True where 0 <= k_pos <= q_pos (and q_pos - k_pos <= ``window`` when given)."""
    q = q_pos[:, :, None]
    k = k_pos[:, None, :]
    keep = (k >= 0) & (k <= q)
    if window is not None:
        keep = keep & (q - k <= window)
    return keep[:, None]


# ------------------------------------------------------------------------------------ documents
def check_doc_ids(doc_ids: object) -> torch.Tensor:
    """Raise TypeError/ValueError unless ``doc_ids`` is an integer (B, L) tensor nondecreasing along each row."""
    if not isinstance(doc_ids, torch.Tensor):
        raise TypeError(f"doc_ids must be a torch.Tensor of shape (B, L), got {type(doc_ids).__name__}")
    if doc_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"doc_ids must be int64 or int32 (one document id per token), got {doc_ids.dtype}")
    if doc_ids.dim() != 2:
        raise ValueError(f"doc_ids must be (B, L), got shape {tuple(doc_ids.shape)}")
    if doc_ids.shape[1] > 1:
        step = doc_ids[:, 1:] - doc_ids[:, :-1]
        if bool((step < 0).any()):
            b, t = (int(x) for x in (step < 0).nonzero()[0])
            raise ValueError(f"doc_ids must be nondecreasing inside each row (a document is one contiguous run); "
                             f"row {b} goes from {int(doc_ids[b, t])} to {int(doc_ids[b, t + 1])} at position {t + 1}")
    return doc_ids


def doc_ids_from_cu_seqlens(cu_seqlens: object, seq_len: int) -> torch.Tensor:
    """(1, L) int64 document ids from ``cu_seqlens``: the 1-D cumulative document lengths
    [0, l_0, l_0 + l_1, ..., L] of one packed row (shared by every row of a batch)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a 1-D integer torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"cu_seqlens must be int64 or int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries [0, ..., L], got shape "
                         f"{tuple(cu_seqlens.shape)}")
    cu = cu_seqlens.long().cpu()
    if int(cu[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(cu[0])}")
    if int(cu[-1]) != seq_len:
        raise ValueError(f"cu_seqlens must end at L={seq_len} (the sequence length), got {int(cu[-1])}")
    if bool((cu[1:] <= cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be strictly increasing (no empty documents), got {cu.tolist()}")
    lengths = cu[1:] - cu[:-1]
    ids = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    return ids[None].to(cu_seqlens.device)


def resolve_doc_ids(doc_ids: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                    seq_len: int) -> torch.Tensor | None:
    """Checked (B, L) document ids from either ``doc_ids`` or ``cu_seqlens`` (None when neither is given)."""
    if doc_ids is not None and cu_seqlens is not None:
        raise ValueError("give doc_ids or cu_seqlens, not both")
    if cu_seqlens is not None:
        return doc_ids_from_cu_seqlens(cu_seqlens, seq_len)
    if doc_ids is None:
        return None
    check_doc_ids(doc_ids)
    if doc_ids.shape[1] != seq_len:
        raise ValueError(f"doc_ids has {doc_ids.shape[1]} positions per row; the tokens have L={seq_len}")
    return doc_ids


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) int64 position of each token inside its own document (0 at each document start)."""
    return _positions(check_doc_ids(doc_ids))


def document_starts(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index, is-start, index of the document's first token), each (B, L), of checked ``doc_ids``."""
    B, L = doc_ids.shape
    idx = torch.arange(L, device=doc_ids.device).expand(B, L)
    start = torch.ones(B, L, dtype=torch.bool, device=doc_ids.device)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx, start, first


def _positions(doc_ids: torch.Tensor) -> torch.Tensor:
    idx, _, first = document_starts(doc_ids)
    return idx - first


def window_bounds(window: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``window`` as (lo, hi), keep lo <= j - i <= hi: ``w`` is (-w, w); None: no window."""
    if window is None:
        return None
    if isinstance(window, int) and not isinstance(window, bool):
        lo, hi = -int(window), int(window)
    elif isinstance(window, tuple | list) and len(window) == 2:
        lo, hi = int(window[0]), int(window[1])
    else:
        raise TypeError(f"window must be an int w (|j - i| <= w) or a (lo, hi) pair, got {window!r}")
    if lo > hi:
        raise ValueError(f"window=(lo, hi) needs lo <= hi, got {window}")
    return lo, hi


def document_ids(doc_ids: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
                 seq_len: int | None = None) -> torch.Tensor:
    """Checked (B, L) ids of a document-mask call: ``seq_len`` defaults to ``cu_seqlens[-1]`` or the ids' L."""
    if doc_ids is None and cu_seqlens is None:
        raise ValueError("a document mask needs doc_ids (B, L) or cu_seqlens")
    if cu_seqlens is not None and seq_len is None and isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.numel():
        seq_len = int(cu_seqlens[-1])
    if doc_ids is not None and seq_len is None:
        seq_len = check_doc_ids(doc_ids).shape[-1]
    ids = resolve_doc_ids(doc_ids, cu_seqlens, int(seq_len))
    assert ids is not None
    return ids


def document_mask(doc_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None, *,
                  seq_len: int | None = None, causal: bool = True,
                  window: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Bool keep mask (B, 1, L, L) of packed documents: query i keeps key j only inside its own document
    (and j <= i when ``causal``; lo <= j - i <= hi for ``window=(lo, hi)``, or |j - i| <= w for ``window=w``).

    Give ``doc_ids`` (B, L) int, nondecreasing along each row, or ``cu_seqlens`` [0, ..., L] (1-D, one
    row layout for the batch; ``seq_len`` defaults to its last entry). The mask is block-diagonal, the
    structure ``masked_attention``'s planner routes to the block-sparse or CSR path when the documents are
    short against L (``blockzoo.ops.explain`` shows the decision); pass ``causal=True`` to the attention too
    (idempotent) or rely on the mask alone. ``blockzoo.ops.document_block_mask`` builds the same mask's
    block-sparse structure from the ids without this (L, L) tensor.
    """
    return document_keep(document_ids(doc_ids, cu_seqlens, seq_len), causal, window)


def document_keep(ids: torch.Tensor, causal: bool, window: int | tuple[int, int] | None) -> torch.Tensor:
    """The (B, 1, L, L) keep mask of already checked ids (``document_mask`` without the checks)."""
    L = ids.shape[1]
    keep = ids[:, :, None] == ids[:, None, :]
    if causal:
        keep &= causal_keep(L, L, ids.device)
    band = window_bounds(window)
    if band is not None:
        d = torch.arange(L, device=ids.device)[None, :] - torch.arange(L, device=ids.device)[:, None]
        keep &= (d >= band[0]) & (d <= band[1])
    return keep[:, None]
