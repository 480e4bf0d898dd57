"""One way to register a fast op: ``fast_op`` makes a forward and a backward implementation into a
differentiable op that torch.compile traces and that eager calls reach without the custom-op dispatch.

It registers ``blockzoo::<name>`` and ``blockzoo::<name>_backward``: ``triton_op``s (torch.compile
traces their Python, whose launches go through ``wrap_triton``: see ``launch.launch``) or, given fake
implementations, opaque ``custom_op``s; then ``register_autograd`` with ``save`` and ``grads``.

Plain tensors outside tracing skip that dispatch (tens of microseconds a call, as much as a kernel at
these sizes): the forward implementation runs directly when no gradient is needed, else one
``autograd.Function.apply`` over the same implementations, ``save`` and ``grads``. Its arguments are
the inputs up to the last differentiable one, then the others as one tuple (apply's cost grows with
its argument count).
"""
from __future__ import annotations

import types
from typing import Any, Callable, Optional

import torch
from torch.library import custom_op, triton_op

from blockzoo.ops.triton import launch

Save = Callable[[Any, tuple, Any], None]  # (ctx, inputs, forward output): setup_context
Grads = Callable[[Any, torch.Tensor, Optional[Callable]], tuple]  # (ctx, grad of the result, backward) -> grads


class FastOp:
    """A registered differentiable op: ``fast(*inputs)`` (every input positional) gives the result.

    ``op`` / ``backward_op`` are the registered ops (what torch.compile sees; ``opcheck`` them),
    ``forward`` / ``backward`` the implementations behind them.
    """

    __slots__ = ("op", "backward_op", "forward", "backward", "_function", "_differentiable", "_split")

    def __init__(self, op: Callable, backward_op: Callable | None, forward: Callable, backward: Callable | None,
                 function: type[torch.autograd.Function], differentiable: tuple[int, ...], split: int):
        self.op, self.backward_op, self.forward, self.backward = op, backward_op, forward, backward
        self._function, self._differentiable, self._split = function, differentiable, split

    def __call__(self, *inputs: Any) -> torch.Tensor:
        tensors = [inputs[i] for i in self._differentiable]
        if launch.eager(*tensors):
            if launch.needs_grad(*tensors):
                return self._function.apply(*inputs[:self._split], inputs[self._split:])
            out = self.forward(*inputs)
        else:
            out = self.op(*inputs)
        return out[0] if type(out) is tuple else out


def fast_op(name: str, forward: Callable, backward: Callable | None, *, save: Save, grads: Grads,
            differentiable: tuple[int, ...], fake: Callable | None = None,
            backward_fake: Callable | None = None) -> FastOp:
    """Register ``forward`` as ``blockzoo::<name>`` and ``backward`` as ``blockzoo::<name>_backward``.

    ``forward(*inputs)`` returns the result, or a tuple (result, extras...) whose extras (saved
    statistics) only ``save`` sees. ``save(ctx, inputs, output)`` stores what backward needs;
    ``grads(ctx, grad, backward)`` returns a tuple with one gradient (or None) per input, calling
    ``backward`` (the backward op when traced, the implementation in eager; None to compose the
    gradient from other ops). ``differentiable``: positions of the tensor inputs that may need
    gradients (they decide the eager path). Without ``fake`` the ops are ``triton_op``s; with it
    (and ``backward_fake`` for the backward) ``custom_op``s. ``tests/ops/triton/test_registration.py``
    registers a toy op both ways.
    """
    if fake is None:
        op = triton_op(f"blockzoo::{name}", mutates_args=())(forward)
        backward_op = None if backward is None else triton_op(f"blockzoo::{name}_backward", mutates_args=())(backward)
    else:
        op = custom_op(f"blockzoo::{name}", forward, mutates_args=())
        op.register_fake(fake)
        backward_op = None
        if backward is not None:
            backward_op = custom_op(f"blockzoo::{name}_backward", backward, mutates_args=())
            backward_op.register_fake(backward_fake)
    op.register_autograd(lambda ctx, grad, *_: grads(ctx, grad, backward_op), setup_context=save)
    split = max(differentiable) + 1
    function = _eager_function(name, forward, backward, save, grads, split)
    return FastOp(op, backward_op, forward, backward, function, differentiable, split)


def _eager_function(name: str, forward: Callable, backward: Callable | None, save: Save, grads: Grads,
                    split: int) -> type[torch.autograd.Function]:
    """The eager twin of the registered op: ``apply(*inputs[:split], inputs[split:])``, same implementations."""

    def fwd(ctx, *args):
        inputs = args[:-1] + args[-1]
        out = forward(*inputs)
        save(ctx, inputs, out)
        return out[0] if type(out) is tuple else out

    def bwd(ctx, grad):
        return grads(ctx, grad, backward)[:split] + (None,)

    body = {"forward": staticmethod(fwd), "backward": staticmethod(bwd)}
    return types.new_class(f"{name}_eager", (torch.autograd.Function,), exec_body=lambda ns: ns.update(body))
