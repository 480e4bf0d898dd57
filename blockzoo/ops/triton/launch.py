"""Where a Triton launch goes, and the grid arithmetic around it.

``eager`` tells plain tensors outside tracing (kernels launch directly, ops skip the custom-op
dispatch) from calls torch.compile or a dispatch mode sees (kernels launch through ``wrap_triton``).
``launch`` routes one launch accordingly; ``num_sms`` and ``persistent_programs`` size persistent grids.
"""
import functools

import torch
from torch.library import wrap_triton
from torch.utils._python_dispatch import _get_current_dispatch_mode

from blockzoo.ops.backend import interpreting  # one reader of TRITON_INTERPRET (the ops call launch.interpreting())
from blockzoo.ops.triton import launcher

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager(*tensors: torch.Tensor | None) -> bool:
    """True for plain tensors outside torch.compile and dispatch modes (fake, functional, proxy).

    Then kernels launch directly and the ops skip the custom-op dispatch (tens of microseconds a
    call, as much as a whole kernel at these sizes); otherwise they go through the registered op.
    """
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    return all(t is None or type(t) in _PLAIN for t in tensors)


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """True when autograd will record a call on these tensors (else the ops skip their autograd.Function)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def launch(kernel, grid, *args, **meta) -> None:
    """Launch ``kernel``: directly on plain tensors (compiled kernels cached per signature by
    ``launcher``), through ``wrap_triton`` while tracing.

    The interpreter cannot run on fake tensors (torch.compile tracing under ``TRITON_INTERPRET=1``);
    there the launch is skipped, since tracing needs only the outputs' metadata. Only the first
    argument's type is checked (every kernel takes a tensor first; the ops check their inputs).
    """
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None or type(args[0]) not in _PLAIN:
        if not interpreting():
            wrap_triton(kernel)[grid](*args, **meta)
    elif interpreting():
        kernel[grid](*args, **meta)
    else:
        launcher.launch(kernel, grid, *args, **meta)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints."""
    return -(-int(a) // int(b))


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (plain Python: ``triton.next_power_of_2`` costs microseconds a call)."""
    n = int(n)
    return 1 << (n - 1).bit_length() if n > 1 else 1


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors on ``device`` (4 on the CPU interpreter: enough to test persistence)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def persistent_programs(device: torch.device, num_warps: int, tiles: int, chunks: int = 1) -> int:
    """Programs per column chunk of a persistent grid over ``tiles`` row tiles: about 1024 threads per SM."""
    per_sm = max(1, 1024 // (32 * num_warps))
    return max(1, min(tiles, num_sms(device) * per_sm // chunks))
