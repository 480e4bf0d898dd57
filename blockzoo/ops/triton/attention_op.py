"""What the attention kernels (block-sparse, CSR) share: their op registration, the program -> heads
mapping and host-side input helpers.

``attention_op`` registers a kernel pair through ``registration.fast_op``. Both kernels take ``q, k, v``
then ``n_layout`` tensors then plain parameters; the forward returns ``(out, lse)``, the backward takes
``(do, q, k, v, out, lse, *layout, *params)`` and returns ``(dq, dk, dv)``.
"""
from __future__ import annotations

from typing import Callable

import torch
import triton
import triton.language as tl

from blockzoo.ops.triton.registration import FastOp, fast_op


def attention_op(name: str, fwd_impl: Callable, bwd_impl: Callable, n_layout: int) -> FastOp:
    """A differentiable ``op(q, k, v, *layout, *params) -> out`` over the two kernels, registered as
    ``blockzoo::<name>`` / ``blockzoo::<name>_backward`` (``op.op`` / ``op.backward_op``)."""

    def fake(q, k, v, *args):
        B, H, L, D = q.shape
        return q.new_empty((B, H, L, D)), q.new_empty((B, H, L), dtype=torch.float32)

    def backward_fake(do, q, k, v, *args):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def save(ctx, inputs: tuple, output: tuple) -> None:
        ctx.params = inputs[3 + n_layout:]
        ctx.save_for_backward(*inputs[:3], *output, *inputs[3:3 + n_layout])

    def grads(ctx, do: torch.Tensor, backward: Callable) -> tuple:
        q, k, v, o, lse, *layout = ctx.saved_tensors
        dq, dk, dv = backward(unit_stride(do), q, k, v, o, lse, *layout, *ctx.params)
        return (dq, dk, dv) + (None,) * (n_layout + len(ctx.params))

    return fast_op(name, fwd_impl, bwd_impl, save=save, grads=grads, differentiable=(0, 1, 2), fake=fake,
                   backward_fake=backward_fake)


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
