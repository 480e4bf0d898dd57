"""Re-launching compiled Triton kernels without ``JITFunction.run``'s per-call work.

``kernel[grid](...)`` binds and specializes every argument, builds a cache key string and checks
globals on every call: tens of microseconds, as long as a whole memory-bound kernel at the sizes
a transformer uses. :func:`launch` does that once per *launch signature* (what Triton specializes
on: tensor dtypes and 16-byte alignment, integer ==1 / multiple-of-16 / 32-bit range, the constexpr
and launch options, the autotuner's key values) and then calls the compiled kernel directly.

The signature is never coarser than Triton's own specialization, so a cached kernel is always one
Triton itself would have picked. Anything unusual (interpreter, launch hooks, constexprs passed
positionally, argument types it does not know) takes the ordinary ``kernel[grid](...)`` path.
A callable grid is given the launch's keyword and tuned values only (not the positional arguments:
building that dict every launch costs microseconds). ``FAST = False`` turns the cache off.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import triton
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

FAST = True
_INT32 = (-(2**31), 2**31)
_entries: dict[tuple, "_Entry | None"] = {}


class _Entry:
    """A compiled kernel and what completes its argument list for one launch signature."""

    __slots__ = ("compiled", "tail", "values")

    def __init__(self, compiled: Any, tail: tuple, values: dict):
        self.compiled, self.tail, self.values = compiled, tail, values


_TENSORS = (torch.Tensor, torch.nn.Parameter)
_SCALARS = {float: "f", bool: "b", type(None): None}  # specialized on their type only


def _signature(kernel: Any, grid: Any, args: tuple, meta: dict) -> tuple | None:
    """The launch signature, or None when an argument's type is not one the cache handles.

    Per argument, what Triton specializes on: a tensor's dtype and 16-byte alignment; an int's
    ==1, multiple of 16, 32-bit range and sign; floats, bools and None by type. One comprehension
    (this runs on every launch: a helper call per argument would cost more than the launch). The
    first argument must be a tensor: its device is part of the signature.
    """
    if not args or type(args[0]) not in _TENSORS:
        return None
    try:
        spec = tuple([(a.dtype, a.data_ptr() % 16 == 0) if type(a) in _TENSORS
                      else (a == 1) | (a % 16 == 0) << 1 | (_INT32[0] <= a < _INT32[1]) << 2 | (a >= 0) << 3
                      if type(a) is int else _SCALARS[type(a)] for a in args])
    except KeyError:
        return None
    tuned = ()
    if isinstance(kernel, Autotuner):  # its choice depends on the values of its key arguments
        n = len(args)
        tuned = tuple([args[i] if i < n else meta.get(k) for i, k in _tuned_positions(kernel)])
    return id(kernel), callable(grid), args[0].get_device(), tuned, spec, tuple(meta.items())


_positions: dict[int, list[tuple[int, str]]] = {}


def _tuned_positions(kernel: Autotuner) -> list[tuple[int, str]]:
    """(argument index, name) of each of an autotuner's key arguments (computed once per kernel)."""
    pos = _positions.get(id(kernel))
    if pos is None:
        pos = _positions[id(kernel)] = [(kernel.arg_names.index(k), k) for k in kernel.keys]
    return pos


def _jit_fn(kernel: Any) -> JITFunction | None:
    fn = kernel
    while not isinstance(fn, JITFunction):
        fn = getattr(fn, "fn", None)
        if fn is None:
            return None
    return fn


def _prepare(kernel: Any, compiled: Any, n_args: int, meta: dict) -> _Entry | None:
    """The entry for a signature, or None when this kernel or call must keep the ordinary path."""
    fn = _jit_fn(kernel)
    if fn is None or not hasattr(compiled, "__getitem__"):
        return None
    if isinstance(kernel, Autotuner) and (getattr(kernel, "reset_to_zero", None)
                                          or getattr(kernel, "restore_value", None)):
        return None
    params = fn.params
    if any(p.is_constexpr for p in params[:n_args]):
        return None
    values = dict(meta)
    if isinstance(kernel, Autotuner):
        if kernel.best_config.pre_hook is not None:
            return None
        values.update(kernel.best_config.kwargs)
    tail = []
    for p in params[n_args:]:
        if p.name in values:
            tail.append(values[p.name])
        elif p.has_default:
            tail.append(p.default)
        else:
            return None
    return _Entry(compiled, tuple(tail), values)


def _stream(device: int) -> int:
    """The current CUDA stream of ``device`` (the current device for -1: no tensor argument) as a raw handle."""
    return torch._C._cuda_getCurrentRawStream(device if device >= 0 else torch.cuda.current_device())


def _hooked() -> bool:
    """True when a launch hook is installed (profilers): then every launch takes the ordinary path."""
    hook = triton.knobs.runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


def launch(kernel: Any, grid: tuple[int, ...] | Callable[[dict], tuple[int, ...]], *args: Any, **meta: Any) -> None:
    """``kernel[grid](*args, **meta)`` with the compiled kernel cached per launch signature."""
    if not FAST or _hooked():
        kernel[grid](*args, **meta)
        return
    key = _signature(kernel, grid, args, meta)
    if key is None:
        kernel[grid](*args, **meta)
        return
    entry = _entries.get(key, False)
    if entry is False:  # first call with this signature: Triton binds, compiles (or autotunes) and launches
        compiled = kernel[grid](*args, **meta)
        _entries[key] = _prepare(kernel, compiled, len(args), meta)
        return
    if entry is None:
        kernel[grid](*args, **meta)
        return
    if callable(grid):
        grid = grid(entry.values)
    g = (*grid, 1, 1)
    entry.compiled[g[:3]](*args, *entry.tail, stream=_stream(key[2]))


def clear() -> None:
    """Forget every cached signature (tests)."""
    _entries.clear()
    _positions.clear()
