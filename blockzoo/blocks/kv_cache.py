"""Key/value cache for incremental decoding: static, preallocated, one slot table per layer.

Each layer keeps keys and values (B, H_kv, capacity, D) and the absolute position of the token in each
slot (B, capacity; -1 = empty or padding). Tokens are written at ``index`` (B,), modulo the capacity: a
layer whose attention sees only a window of ``w`` positions back keeps ``w + 1`` slots, a ring buffer
whose memory is bounded by the window; the others keep the whole context. Queries are matched to keys
by position (``blockzoo.ops.position_keep``), so left padding, ring order and per-sequence offsets need
no special case. Cross-attention keys/values (encoder-decoder) are computed once and kept.

With ``static=True`` attention reads the whole buffer (fixed shapes: the decode step can be captured in
a CUDA graph); otherwise it reads only the filled slots.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class LayerCache:
    """One layer's cached self-attention keys/values (and cross-attention keys/values)."""

    def __init__(self, owner: KVCache, kv_heads: int, head_dim: int, capacity: int, window: int | None,
                 value_head_dim: int | None = None):
        B, dev = owner.batch, owner.device
        self.owner, self.capacity, self.window = owner, capacity, window
        self.k = torch.zeros(B, kv_heads, capacity, head_dim, dtype=owner.dtype, device=dev)
        self.v = torch.zeros(B, kv_heads, capacity, value_head_dim or head_dim, dtype=owner.dtype, device=dev)
        self.slot_pos = torch.full((B, capacity), -1, dtype=torch.int64, device=dev)
        self.cross_k: torch.Tensor | None = None
        self.cross_v: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v, self.slot_pos]

    def reset(self) -> None:
        self.slot_pos.fill_(-1)
        self.cross_k = self.cross_v = None

    def _view(self, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.owner.static:
            return self.k, self.v, self.slot_pos
        n = min(self.owner.length + new, self.capacity)
        return self.k[:, :, :n], self.v[:, :, :n], self.slot_pos[:, :n]

    def write(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """Store k/v (B, H_kv, L, D) of tokens at positions ``pos`` (B, L) (-1: padding, never attended)."""
        L = k.shape[2]
        if L > self.capacity:  # a ring keeps only the last `capacity` tokens
            k, v, pos = k[:, :, -self.capacity:], v[:, :, -self.capacity:], pos[:, -self.capacity:]
        start = self.owner.index[:, None] + (L - k.shape[2])
        slots = (start + torch.arange(k.shape[2], device=k.device)) % self.capacity  # (B, L')
        idx = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        self.k.scatter_(2, idx, k.to(self.k.dtype))
        self.v.scatter_(2, slots[:, None, :, None].expand(-1, v.shape[1], -1, v.shape[3]), v.to(self.v.dtype))
        self.slot_pos.scatter_(1, slots, pos)

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the new tokens and return every key/value a new query may see, with their positions."""
        L = k.shape[2]
        if self.window is not None and self.capacity < self.owner.max_len and L + self.window > self.capacity:
            # several tokens into a ring: the later ones would evict keys the earlier ones still need
            old_k, old_v, old_pos = self._view(0)
            seen = (torch.cat([old_k, k.to(old_k.dtype)], 2), torch.cat([old_v, v.to(old_v.dtype)], 2),
                    torch.cat([old_pos, pos], 1))  # copies, made before the write
            self.write(k, v, pos)
            return seen
        self.write(k, v, pos)
        return self._view(L)


class KVCache:
    """The caches of a stack of blocks, for a batch of ``batch`` sequences of up to ``max_len`` tokens.

    ``index`` (B,) is where each sequence writes next; ``advance(n)`` moves it after a forward of n tokens
    (the model's ``forward(..., cache=...)`` does it; a captured decode step leaves it to its caller).
    """

    def __init__(self, blocks: Iterable[nn.Module], batch: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str, static: bool = False, path: str = "model.blocks"):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.batch, self.max_len, self.dtype, self.device = batch, max_len, dtype, torch.device(device)
        self.static = static
        self.index = torch.zeros(batch, dtype=torch.int64, device=self.device)
        self.length, self.empty = 0, True
        self.context_padding: torch.Tensor | None = None  # encoder padding for cached cross-attention
        self.layers: list[LayerCache] = []
        for i, block in enumerate(blocks):
            mha = block.self_attn
            check_decodable(mha, f"{path}.{i}")
            window = mha.attention.decode_window()
            cap = max_len if window is None else min(max_len, window + 1)
            self.layers.append(LayerCache(self, mha.num_kv_heads, mha.head_dim, cap, window,
                                          getattr(mha, "value_head_dim", mha.head_dim)))
        if static:
            mark_static(self)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]

    def check(self, batch: int, dtype: torch.dtype, device: torch.device, length: int, arg: str = "cache") -> None:
        """Raise ValueError naming ``arg`` when this cache does not fit a batch of ``batch`` x ``length`` tokens."""
        if batch != self.batch:
            raise ValueError(f"{arg} was built for batch size {self.batch}, got a batch of {batch}")
        if dtype != self.dtype:
            raise ValueError(f"{arg} was built for dtype {self.dtype}, the model runs in {dtype}")
        if torch.device(device).type != self.device.type:
            raise ValueError(f"{arg} is on {self.device}, the model on {device}")
        if length > self.max_len:
            raise ValueError(f"{arg} holds {self.max_len} tokens per sequence; {length} are needed")

    def reset(self) -> None:
        """Forget every cached token (the buffers are kept)."""
        self.index.zero_()
        self.length, self.empty = 0, True
        for layer in self.layers:
            layer.reset()

    def advance(self, n: int) -> None:
        """Move the write index past ``n`` tokens just written."""
        if self.length + n > self.max_len:
            raise ValueError(f"cache holds {self.max_len} tokens per sequence; {self.length + n} were written")
        self.index += n
        self.length += n
        self.empty = False


def check_decodable(mha: nn.Module, path: str) -> None:
    """Raise ValueError naming the attention when it cannot decode over a cache."""
    att = mha.attention
    name = getattr(att.cfg, "name", type(att).__name__)
    if not getattr(att, "supports_decoding", False):
        raise ValueError(f"{path}: attention {name!r} cannot decode incrementally with a key/value cache "
                         "(non-causal or global mixing); generate with use_cache=False to re-run the window")
    if not mha.causal:
        raise ValueError(f"{path}: attention {name!r} is not causal; incremental decoding needs causal "
                         "self-attention")


def mark_static(cache: KVCache) -> None:
    """Tell torch.compile the cache buffers keep their addresses (updated in place inside a CUDA graph)."""
    mark = getattr(getattr(torch, "_dynamo", None), "mark_static_address", None)
    if mark is None:
        return
    mark(cache.index)
    for layer in cache.layers:
        for t in layer.tensors():
            mark(t)


def cached_attention(mha: nn.Module, x: torch.Tensor, context: torch.Tensor | None,
                     mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                     positions: torch.Tensor | None, cache: LayerCache) -> torch.Tensor:
    """``mha``'s attention over a cache: (B, H, L, D) heads before the output projection.

    Cross-attention projects the encoder output once. Self-attention on an empty cache (the prompt) runs
    the mechanism's own path (``masked_attention``'s dispatch, key padding for left-padded prompts) and
    fills the cache; later calls attend the new tokens to everything cached.
    """
    B, L, _ = x.shape
    if mha.cross:
        if cache.cross_k is None:
            if context is None:
                raise ValueError("cross-attention needs a context tensor on its first cached call")
            q, k, v = mha._project(x, context)
            q, k = mha.position_qk(q, k, None)  # qk_norm (cross-attention has no rotary)
            cache.cross_k, cache.cross_v = k, v
        else:
            q, _ = mha.position_qk(mha.project_query(x), None, None)
        return mha.attend(q, cache.cross_k, cache.cross_v, None, key_padding_mask)
    if positions is None:
        raise ValueError("a cached forward needs positions (B, L): the absolute position of each new token")
    if positions.dim() == 1:
        positions = positions.expand(B, L)
    q, k, v = mha._project(x, None)
    q, k = mha.position_qk(q, k, positions)  # qk_norm before rotary, as on the training path
    owner = cache.owner
    if owner.empty:  # the prompt: the training path, then fill the cache
        out = mha.attend(q, k, v, mask, key_padding_mask)
        pos = positions if key_padding_mask is None else positions.masked_fill(key_padding_mask, -1)
        cache.write(k, v, pos)
        return out
    if mask is not None or key_padding_mask is not None:
        raise ValueError("after the prompt, a cached forward takes no mask or key_padding_mask (the cache "
                         "matches keys to queries by position)")
    keys, values, key_pos = cache.update(k, v, positions)
    return mha.attention.decode(q, keys, values, positions, key_pos)
