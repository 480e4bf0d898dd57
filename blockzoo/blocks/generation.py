"""Token generation: prompt checks, logit processors, sampling and the decode loop shared by the models.

A model supplies two functions: ``prefill(tokens, positions, padding) -> logits`` of the last position
(B, vocab) and ``step(tokens, positions) -> logits`` for one new token per sequence. With a key/value cache
``prefill`` fills it and ``step`` reads it; without one both re-run the whole window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

if TYPE_CHECKING:
    from blockzoo.blocks.kv_cache import KVCache

Logits = Callable[..., torch.Tensor]


@dataclass
class Sampling:
    """How the next token is chosen from the logits (``temperature=0``: greedy)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def check(self) -> None:
        """Raise ValueError naming the argument that is out of range."""
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")


def left_pad(prompts: Sequence[Sequence[int]], pad_token: int, device: torch.device | str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts as a left-padded (B, P) int64 tensor and its (B, P) bool padding (True = pad)."""
    rows = [list(p) for p in prompts]
    if not rows:
        raise ValueError("prompt is empty (no sequences)")
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_token, dtype=torch.int64)
    padding = torch.ones(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            tokens[i, width - len(r):] = torch.tensor(r, dtype=torch.int64)
            padding[i, width - len(r):] = False
    return tokens.to(device), padding.to(device)


def check_prompt(prompt: torch.Tensor, padding: torch.Tensor | None, vocab_size: int, arg: str = "prompt",
                 padding_arg: str = "padding", left: bool = True) -> torch.Tensor:
    """Validate a (B, P) prompt and its padding (left padding when ``left``); return the padding ((B, P)
    bool, True = pad)."""
    if not isinstance(prompt, torch.Tensor):
        raise TypeError(f"{arg} must be a (batch, length) int tensor or a list of token lists, "
                        f"got {type(prompt).__name__}")
    if prompt.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{arg} must hold int64/int32 tokens, got {prompt.dtype}")
    if prompt.dim() != 2:
        raise ValueError(f"{arg} must be (batch, length), got shape {tuple(prompt.shape)}")
    if prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise ValueError(f"{arg} is empty (shape {tuple(prompt.shape)}); give at least one token per sequence")
    if padding is None:
        padding = torch.zeros(prompt.shape, dtype=torch.bool, device=prompt.device)
    if padding.dtype != torch.bool or padding.shape != prompt.shape:
        raise ValueError(f"{padding_arg} must be a bool tensor of the {arg}'s shape {tuple(prompt.shape)} (True = pad), "
                         f"got {padding.dtype} {tuple(padding.shape)}")
    padding = padding.to(prompt.device)
    if left and (padding[:, 1:] & ~padding[:, :-1]).any():
        raise ValueError(f"{padding_arg} must be left padding (pads before each sequence's tokens)")
    empty = padding.all(1)
    if empty.any():
        raise ValueError(f"{arg} sequence {int(empty.nonzero()[0])} is empty (all padding)")
    real = prompt[~padding]
    if real.min() < 0 or real.max() >= vocab_size:
        bad = real[(real < 0) | (real >= vocab_size)][0]
        raise ValueError(f"{arg} holds token {int(bad)}, outside the vocabulary [0, {vocab_size})")
    return padding


def positions_of(padding: torch.Tensor) -> torch.Tensor:
    """(B, P) absolute position of each token inside its own (left-padded) sequence; pads get 0."""
    return ((~padding).long().cumsum(1) - 1).clamp_min(0)


def process_logits(logits: torch.Tensor, s: Sampling, seen: torch.Tensor | None) -> torch.Tensor:
    """Apply repetition penalty, temperature, top-k, top-p and min-p to float logits (B, V)."""
    if seen is not None and s.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / s.repetition_penalty, logits * s.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if s.temperature == 0:
        return logits
    logits = logits / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = logits.topk(int(s.top_k), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass of the better tokens
        drop_sorted = before > s.top_p
        drop_sorted[:, 0] = False
        logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    if s.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < s.min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return logits


def choose(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """(B,) next tokens: argmax when temperature is 0, else a draw from softmax(logits) on the
    generator's device (the same generator state gives the same tokens)."""
    if s.temperature == 0:
        return logits.argmax(-1)
    probs = logits.softmax(-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0].to(logits.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def decode_loop(prefill: Logits, step: Logits, prompt: torch.Tensor, padding: torch.Tensor, max_new_tokens: int,
                sampling: Sampling, vocab_size: int, eos_token: int | None = None, pad_token: int | None = None,
                generator: torch.Generator | None = None, after_step: Callable[[], None] | None = None,
                on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` after a left-padded prompt; (B, P + n) tokens.

    A sequence that emits ``eos_token`` stops: ``pad_token`` (default: eos_token) fills the rest; the loop
    ends early when every sequence has stopped. ``after_step`` runs after each ``step`` (the cache advances
    there); ``on_token`` gets each new (B,) column (streaming).
    """
    pad_value = eos_token if pad_token is None else pad_token
    positions = positions_of(padding)
    tokens = prompt.masked_fill(padding, 0).long()
    seen = None
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros(prompt.shape[0], vocab_size, dtype=torch.bool, device=prompt.device)
        seen.scatter_(1, tokens, ~padding)
    logits = prefill(tokens, positions, padding)
    next_pos = positions[:, -1] + 1
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    new: list[torch.Tensor] = []
    for i in range(max_new_tokens):
        nxt = choose(process_logits(logits.float(), sampling, seen), sampling, generator)
        if eos_token is not None:
            nxt = nxt.masked_fill(done, pad_value)
            done = done | (nxt == eos_token)
        new.append(nxt)
        if on_token is not None:
            on_token(nxt)
        if i == max_new_tokens - 1 or (eos_token is not None and bool(done.all())):
            break
        fed = nxt if eos_token is None else nxt.masked_fill(done, eos_token)  # pad_token may be no token
        if seen is not None:
            seen.scatter_(1, fed[:, None], True)
        logits = step(fed[:, None], next_pos[:, None])
        if after_step is not None:
            after_step()
        next_pos = next_pos + 1
    if not new:
        return prompt
    return torch.cat([prompt, torch.stack(new, 1).to(prompt.dtype)], 1)


def check_length(model: torch.nn.Module, blocks: Sequence[torch.nn.Module], prompt_len: int, max_new_tokens: int,
                 use_cache: bool) -> None:
    """Refuse a prompt (or prompt + new tokens) the model cannot place, with the numbers. Only a model whose
    every layer attends within a window and whose embedding has no position table decodes past max_seq_len."""
    limit = int(getattr(model.cfg, "max_seq_len", 0) or 0)
    if not limit:
        return
    if prompt_len > limit:
        raise ValueError(f"prompt has {prompt_len} tokens (left padding included), more than "
                         f"model.max_seq_len={limit}")
    windows = [getattr(b.self_attn.attention, "decode_window", lambda: None)() for b in blocks]
    table = hasattr(model.embedding, "position")
    if use_cache and all(w is not None for w in windows) and not table:
        return
    if prompt_len + max_new_tokens > limit:
        why = "its embedding has a position table" if table else "an attention without a window keeps every key"
        raise ValueError(f"max_new_tokens={max_new_tokens} after a prompt of {prompt_len} tokens needs "
                         f"{prompt_len + max_new_tokens} positions, more than model.max_seq_len={limit} ({why})")


def generate(model: torch.nn.Module, blocks: Sequence[torch.nn.Module], last_logits: Logits,
             prompt: torch.Tensor | Sequence[Sequence[int]], max_new_tokens: int, *, padding: torch.Tensor | None,
             sampling: Sampling, eos_token: int | None, pad_token: int | None, generator: torch.Generator | None,
             compile: bool, use_cache: bool, cache: KVCache | None,
             on_token: Callable[[torch.Tensor], None] | None, step_logits: Logits | None = None) -> torch.Tensor:
    """The shared body of the models' ``generate``: checks, cache, prefill and the decode loop.

    ``last_logits(tokens, positions, padding, cache)`` -> (B, vocab) logits of the last position;
    ``step_logits`` (default: last_logits) the same over a filled cache, depending on nothing else (compiled
    once per model).
    """
    from blockzoo.blocks.kv_cache import KVCache

    vocab = int(model.cfg.vocab_size)
    param = next(model.parameters())
    if not isinstance(prompt, torch.Tensor):
        if padding is not None:
            raise ValueError("padding is for a tensor prompt; a list of token lists is left-padded here")
        prompt, padding = left_pad(prompt, 0 if pad_token is None or pad_token < 0 else pad_token, param.device)
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    sampling.check()
    padding = check_prompt(prompt, padding, vocab)
    if eos_token is not None and not 0 <= eos_token < vocab:
        raise ValueError(f"eos_token={eos_token} is outside the vocabulary [0, {vocab})")
    if cache is not None and not use_cache:
        raise ValueError("cache was given with use_cache=False")
    B, P = prompt.shape
    check_length(model, blocks, P, max_new_tokens, use_cache)
    if not use_cache:
        if compile:
            raise ValueError("compile=True needs use_cache=True (the captured step reads the static cache)")
        return decode_loop(*window_rerun(last_logits), prompt, padding, max_new_tokens, sampling, vocab, eos_token,
                           pad_token, generator, on_token=on_token)
    total = P + max(max_new_tokens, 1)
    if cache is None:
        cache = KVCache(blocks, B, total, param.dtype, param.device, static=compile)
    else:
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a blockzoo KVCache, got {type(cache).__name__}")
        cache.check(B, param.dtype, param.device, total)
        cache.reset()

    def prefill(tokens: torch.Tensor, positions: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        out = last_logits(tokens, positions, pad, cache)
        cache.advance(P)
        return out

    step_logits = step_logits or last_logits
    step_fn = compiled(model, step_logits) if compile else step_logits
    return decode_loop(prefill, lambda t, p: step_fn(t, p, None, cache), prompt, padding, max_new_tokens, sampling,
                       vocab, eos_token, pad_token, generator, after_step=lambda: cache.advance(1), on_token=on_token)


def window_rerun(last_logits: Logits) -> tuple[Logits, Logits]:
    """(prefill, step) that re-run the whole window for every new token (no cache): the reference path."""
    state: dict[str, torch.Tensor] = {}

    def prefill(tokens: torch.Tensor, positions: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        state.update(tokens=tokens, positions=positions, pad=pad)
        return last_logits(tokens, positions, pad, None)

    def step(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        state["tokens"] = torch.cat([state["tokens"], tokens], 1)
        state["positions"] = torch.cat([state["positions"], positions], 1)
        state["pad"] = torch.cat([state["pad"], torch.zeros_like(tokens, dtype=torch.bool)], 1)
        return last_logits(state["tokens"], state["positions"], state["pad"], None)

    return prefill, step


def compiled(model: torch.nn.Module, step_logits: Logits) -> Logits:
    """``step_logits`` under ``torch.compile(mode="reduce-overhead")`` (CUDA graphs on the GPU), made once
    per model and kept on it."""
    fn = model.__dict__.get("_compiled_decode")
    if fn is None:
        fn = torch.compile(step_logits, mode="reduce-overhead", dynamic=False)
        model.__dict__["_compiled_decode"] = fn
    return fn
