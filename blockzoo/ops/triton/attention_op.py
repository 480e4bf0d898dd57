"""Registering a Triton attention kernel pair (forward, backward) as a differentiable op, and what else
the attention kernels share (the program -> heads mapping, input helpers).

``torch.compile`` sees opaque custom ops (with fake implementations and autograd); eager calls go
through an ``autograd.Function`` over the same kernels, since a custom op's dispatch costs tens of
microseconds a call. Both kernels take ``q, k, v`` then ``n_layout`` tensors then plain parameters;
the forward returns ``(out, lse)``, the backward takes ``(do, q, k, v, out, lse, *layout, *params)``.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from blockzoo.ops.triton import launch


@triton.jit
def query_heads(H, GROUP, GSB, GSH):
    """An attention program's (batch x head, batch, head, kv head, mask group) from program_id(1).

    Grouped-query heads share kv head ``h // GROUP``; the mask group is ``b * GSB + h * GSH``
    (strides 0 where the mask is shared across batch or heads).
    """
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    return bh, b, h, h // GROUP, b * GSB + h * GSH


def unit_stride(t: torch.Tensor) -> torch.Tensor:
    """The tensor with unit stride along its last dim (a view when it already has one)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def key_rows(key_keep: torch.Tensor | None, batch: int, seq: int) -> torch.Tensor | None:
    """(B, S) bool keep (False for padding keys) -> contiguous uint8 rows for the kernels."""
    if key_keep is None:
        return None
    if key_keep.dtype != torch.bool or tuple(key_keep.shape) != (batch, seq):
        raise ValueError(f"key_keep must be bool ({batch}, {seq}), got {key_keep.dtype} {tuple(key_keep.shape)}")
    return key_keep.contiguous().view(torch.uint8)


def grad_buffers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Uninitialised dq, dk, dv (shaped like q, k, v) and the fp32 (B, H, L) rowsum(dO·O) buffer."""
    B, H, L, D = q.shape
    contiguous = torch.contiguous_format
    return (torch.empty((B, H, L, D), dtype=q.dtype, device=q.device),
            torch.empty_like(k, memory_format=contiguous), torch.empty_like(v, memory_format=contiguous),
            torch.empty((B, H, L), dtype=torch.float32, device=q.device))


def attention_op(name: str, fwd_impl: Callable, bwd_impl: Callable, n_layout: int) -> Callable[..., torch.Tensor]:
    """A differentiable ``op(q, k, v, *layout, *params) -> out`` over the two kernels, registered as
    ``blockzoo::<name>_fwd`` / ``blockzoo::<name>_bwd`` (also reachable as ``op.fwd`` / ``op.bwd``)."""
    fwd = torch.library.custom_op(f"blockzoo::{name}_fwd", fwd_impl, mutates_args=())
    bwd = torch.library.custom_op(f"blockzoo::{name}_bwd", bwd_impl, mutates_args=())

    @fwd.register_fake
    def _(q, k, v, *args):
        B, H, L, D = q.shape
        return q.new_empty((B, H, L, D)), q.new_empty((B, H, L), dtype=torch.float32)

    @bwd.register_fake
    def _(do, q, k, v, *args):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def setup(ctx, inputs, output) -> None:
        ctx.params = inputs[3 + n_layout:]
        ctx.save_for_backward(*inputs[:3], *output, *inputs[3:3 + n_layout])

    def grads(backward: Callable, ctx, do: torch.Tensor) -> tuple:
        q, k, v, o, lse, *layout = ctx.saved_tensors
        dq, dk, dv = backward(unit_stride(do), q, k, v, o, lse, *layout, *ctx.params)
        return (dq, dk, dv) + (None,) * (n_layout + len(ctx.params))

    fwd.register_autograd(lambda ctx, do, _dlse: grads(bwd, ctx, do), setup_context=setup)

    class Eager(torch.autograd.Function):
        """q, k, v as inputs, the layout and parameters as one constant tuple (apply's cost grows with
        its argument count, and only q, k, v get gradients)."""

        @staticmethod
        def forward(ctx, q, k, v, rest):
            inputs = (q, k, v, *rest)
            o, lse = fwd_impl(*inputs)
            setup(ctx, inputs, (o, lse))
            return o

        @staticmethod
        def backward(ctx, do):
            return grads(bwd_impl, ctx, do)[:3] + (None,)

    def op(*inputs) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return fwd(*inputs)[0]
        q, k, v, *rest = inputs
        if not launch.needs_grad(q, k, v):
            return fwd_impl(*inputs)[0]
        return Eager.apply(q, k, v, tuple(rest))

    op.fwd, op.bwd = fwd, bwd  # the registered ops themselves (opcheck in tests)
    return op
