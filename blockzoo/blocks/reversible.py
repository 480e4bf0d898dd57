"""Reversible transformer stacks (RevNet coupling as in Reformer, Kitaev et al., 2020).

A reversible block maps a pair (x1, x2) to y1 = x1 + F(x2), y2 = x2 + G(y1), F the attention
branch and G the feedforward branch. The inputs follow from the outputs (x2 = y2 - G(y1),
x1 = y1 - F(x2)), so :func:`reversible_stack` keeps only the last pair for backward and
recomputes every block's activations from it: activation memory does not grow with depth.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from blockzoo import ops
from blockzoo.blocks.block import TransformerBlock
from blockzoo.blocks.model import DecoderLM, TransformerModel
from blockzoo.config import BlockConfig, ModelConfig
from blockzoo.registry import register_block, register_model


@dataclass
class ReversibleBlockConfig(BlockConfig):
    """Config of a reversible block (residual must be 'pre')."""


@register_block("reversible", ReversibleBlockConfig)
class ReversibleBlock(TransformerBlock):
    """A pre-norm block exposing its branches F (norm, attention) and G (norm, feedforward).

    ``couple(x1, x2)`` is the reversible coupling; ``forward(x)`` (inherited) is the ordinary
    pre-norm block x + F(x), then + G(·).
    """

    def __init__(self, cfg: ReversibleBlockConfig):
        if cfg.residual != "pre":
            raise ValueError(f"a reversible block needs residual='pre' (additive coupling), got {cfg.residual!r}")
        super().__init__(cfg)

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.cfg.dropout > 0:
            return ops.dropout_bias_act(y, None, self.cfg.dropout, "none", training=True)
        return y

    def f(self, x: torch.Tensor, mask: torch.Tensor | None = None,
          key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention branch: dropout(attention(norm(x)))."""
        return self._drop(self.self_attn(self.attn_res.norm(x), mask=mask, key_padding_mask=key_padding_mask))

    def g(self, x: torch.Tensor) -> torch.Tensor:
        """The feedforward branch: dropout(feedforward(norm(x)))."""
        return self._drop(self.feedforward(self.ff_res.norm(x)))

    def branches(self) -> tuple[tuple[nn.Module, ...], tuple[nn.Module, ...]]:
        """The modules of F and of G."""
        return (self.self_attn, self.attn_res), (self.feedforward, self.ff_res)

    def couple(self, x1: torch.Tensor, x2: torch.Tensor, mask: torch.Tensor | None = None,
               key_padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x1, x2) -> (x1 + F(x2), x2 + G(y1))."""
        y1 = x1 + self.f(x2, mask, key_padding_mask)
        return y1, x2 + self.g(y1)


def _params(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def _aux_modules(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """Submodules that store an auxiliary loss (``aux_loss``, e.g. MoE) in their forward."""
    return [sub for m in modules for sub in m.modules() if hasattr(sub, "aux_loss")]


def _aux_values(modules: list[nn.Module], like: torch.Tensor) -> list[torch.Tensor]:
    return [m.aux_loss if isinstance(m.aux_loss, torch.Tensor) else like.new_zeros(()) for m in modules]


def _recomputed(out: torch.Tensor, grad: torch.Tensor, aux: list[nn.Module],
                aux_grads: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs and their incoming gradients for one recomputed branch: the branch and its fresh aux losses."""
    outs, grads = [out], [grad]
    for m, g in zip(aux, aux_grads):
        if isinstance(m.aux_loss, torch.Tensor) and m.aux_loss.requires_grad:
            outs.append(m.aux_loss)
            grads.append(g.to(m.aux_loss.dtype))
    return outs, grads


class _RngState:
    """The CPU (and the tensor's CUDA device) RNG state, so a recomputed branch redraws the same dropout."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def _rng_state(block: nn.Module, device: torch.device) -> _RngState | None:
    return _RngState(device) if block.training else None


def _replay(state: _RngState | None) -> contextlib.AbstractContextManager:
    return state.restored() if state is not None else contextlib.nullcontext()


class _ReversibleStackFunction(torch.autograd.Function):
    """Forward without storing activations; backward inverts each block to recompute them.

    Outputs (y1, y2, *aux): the final pair and, per block, the auxiliary losses its F and G
    branches stored (so they stay differentiable). Saved for backward: the final pair and the
    masks, whatever the depth; ctx also keeps two RNG states per block in training mode (a few
    KB on CPU, 16 bytes on CUDA). Backward recomputes under the forward's autocast state.
    """

    @staticmethod
    def forward(ctx, blocks: Sequence[ReversibleBlock], mask: torch.Tensor | None,
                key_padding_mask: torch.Tensor | None, x1: torch.Tensor, x2: torch.Tensor,
                *params: nn.Parameter) -> tuple[torch.Tensor, ...]:
        states, aux = [], []
        for block in blocks:
            f_modules, g_modules = block.branches()
            state_f = _rng_state(block, x1.device)
            y1 = x1 + block.f(x2, mask, key_padding_mask)
            aux += _aux_values(_aux_modules(f_modules), y1)
            state_g = _rng_state(block, x1.device)
            x1, x2 = y1, x2 + block.g(y1)
            aux += _aux_values(_aux_modules(g_modules), y1)
            states.append((state_f, state_g))
        ctx.blocks, ctx.states = blocks, states
        device = x1.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        ctx.save_for_backward(x1, x2, mask, key_padding_mask)
        return (x1, x2, *aux)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy1: torch.Tensor, dy2: torch.Tensor, *daux: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y1, y2, mask, key_padding_mask = ctx.saved_tensors
        param_grads: list[torch.Tensor | None] = []
        end = len(daux)
        device, dtype, enabled = ctx.autocast
        autocast = torch.autocast(device, dtype=dtype, enabled=enabled)  # recompute as the forward computed
        for block, (state_f, state_g) in zip(reversed(ctx.blocks), reversed(ctx.states)):
            f_modules, g_modules = block.branches()
            f_aux, g_aux = _aux_modules(f_modules), _aux_modules(g_modules)
            mid, start = end - len(g_aux), end - len(g_aux) - len(f_aux)
            g_params, f_params = _params(g_modules), _params(f_modules)
            with torch.enable_grad(), autocast:
                z1 = y1.detach().requires_grad_()
                with _replay(state_g):
                    g_out = block.g(z1)
                outs, grads = _recomputed(g_out, dy2, g_aux, daux[mid:end])
                dz1, *dg = torch.autograd.grad(outs, (z1, *g_params), grads, allow_unused=True)
            dz1 = dy1 if dz1 is None else dy1 + dz1
            x2 = (y2 - g_out).detach().requires_grad_()
            with torch.enable_grad(), autocast:
                with _replay(state_f):
                    f_out = block.f(x2, mask, key_padding_mask)
                outs, grads = _recomputed(f_out, dz1, f_aux, daux[start:mid])
                dx2, *df = torch.autograd.grad(outs, (x2, *f_params), grads, allow_unused=True)
            y1, y2 = (y1 - f_out).detach(), x2.detach()
            dy1, dy2 = dz1, dy2 if dx2 is None else dy2 + dx2
            param_grads = [*df, *dg, *param_grads]
            end = start
        return (None, None, None, dy1, dy2, *param_grads)


def reversible_stack(blocks: Sequence[ReversibleBlock], x1: torch.Tensor, x2: torch.Tensor,
                     mask: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run coupled ``blocks`` on (x1, x2) storing no per-block activations (without grad: a plain loop).

    Auxiliary losses the blocks store (MoE) are replaced by differentiable outputs of the stack.
    """
    if not torch.is_grad_enabled():
        return coupled_stack(blocks, x1, x2, mask, key_padding_mask)
    branches = [modules for block in blocks for modules in block.branches()]
    params = [p for modules in branches for p in _params(modules)]
    y1, y2, *aux = _ReversibleStackFunction.apply(blocks, mask, key_padding_mask, x1, x2, *params)
    for module, value in zip([m for modules in branches for m in _aux_modules(modules)], aux):
        if isinstance(module.aux_loss, torch.Tensor):
            module.aux_loss = value
    return y1, y2


def coupled_stack(blocks: Sequence[ReversibleBlock], x1: torch.Tensor, x2: torch.Tensor,
                  mask: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same coupled computation under ordinary autograd (stores every block's activations)."""
    for block in blocks:
        x1, x2 = block.couple(x1, x2, mask, key_padding_mask)
    return x1, x2


@dataclass
class ReversibleLMConfig(ModelConfig):
    """Config of the reversible decoder-only LM (residual must be 'pre')."""

    reversible: bool = field(default=True, metadata={
        "help": "recompute activations in backward; false runs the same stack with ordinary autograd"})


@register_model("reversible_lm", ReversibleLMConfig)
class ReversibleLM(DecoderLM):
    """Decoder-only LM on a reversible stack (Reformer, Kitaev et al., 2020).

    The embedding is fed to both streams (x1 = x2 = x); the output is the mean of the two
    streams, then the final norm and the (tied) head. Activation memory for backward is that of
    one block's recomputation plus the final pair, independent of ``num_layers``. Weights have
    the same names as ``decoder_lm``'s, but the coupled stack computes a different function.
    """

    def __init__(self, cfg: ReversibleLMConfig):
        TransformerModel.__init__(self, cfg)  # not DecoderLM.__init__: it would build ordinary blocks
        if cfg.num_layers < 1:
            raise ValueError(f"model.num_layers must be >= 1, got {cfg.num_layers}")
        self.blocks = self.make_blocks("reversible", cfg.num_layers, causal=True)
        self.norm = self.final_norm()
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.dim_model, cfg.vocab_size, bias=False)
        self.init()

    def check_packable(self) -> None:
        """The reversible stack takes no per-document positions: packed documents are refused."""
        raise ValueError("model 'reversible_lm' cannot run packed documents (doc_ids / task.pack=true): its "
                         "coupled stack takes no per-document positions; use decoder_lm or task.pack=false")

    def hidden(self, tokens: torch.Tensor, doc_ids: torch.Tensor | None = None,
               cu_seqlens: torch.Tensor | None = None, *, positions: torch.Tensor | None = None,
               padding: torch.Tensor | None = None, cache: Any = None) -> torch.Tensor:
        """Unpadded, unpacked tokens only (positions are then arange(L)); no key/value cache."""
        if doc_ids is not None or cu_seqlens is not None:
            self.check_packable()
        if cache is not None:
            raise ValueError("reversible_lm cannot decode with a key/value cache; generate with use_cache=False")
        if padding is not None and bool(padding.any()):
            raise ValueError("reversible_lm takes no padding: generate from prompts of one length")
        x = self.embedding(tokens)
        stack = reversible_stack if self.cfg.reversible else coupled_stack
        y1, y2 = stack(self.blocks, x, x)
        return self.norm((y1 + y2) / 2)

    def decodes_with_cache(self) -> bool:
        return False

    def generate(self, prompt: torch.Tensor, max_new_tokens: int, **options: Any) -> torch.Tensor:
        """``DecoderLM.generate`` re-running the window for each token (the coupled stack keeps no cache)."""
        if options.setdefault("use_cache", False):
            raise ValueError("reversible_lm cannot decode with a key/value cache; use_cache must be False")
        return super().generate(prompt, max_new_tokens, **options)
