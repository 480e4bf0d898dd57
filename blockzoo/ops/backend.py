"""Choosing between an op's fast path and its PyTorch path.

``choose(op, *tensors)`` answers "can the fast path run for these tensors?" once per
(op, device type, dtype) and remembers it. When the answer is no, it warns once per
(op, reason) with :class:`BlockzooFallbackWarning` and the torch path runs. Users force a path
with ``BLOCKZOO_BACKEND=torch|triton`` or ``with blockzoo.ops.force("torch"):``; forcing an
unavailable fast path raises with the reason.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "BLOCKZOO_BACKEND"
COMPILED_PATHS_ENV = "BLOCKZOO_COMPILED_PATHS"


class BlockzooWarning(UserWarning):
    """Base class of every warning blockzoo emits."""


class BlockzooFallbackWarning(BlockzooWarning):
    """A fast path could not run and the PyTorch path ran instead (emitted once per op and reason)."""


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run for the given tensors."""


_forced: list[str] = []  # stack of force() / set_backend() choices (a plain list traces under torch.compile)
_warned: set[tuple[str, str]] = set()
_broken: dict[tuple[str, str, torch.dtype], str] = {}
_last_path: dict[str, str] = {}


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


@contextlib.contextmanager
def force(name: str) -> Iterator[None]:
    """Context manager forcing every op to the ``name`` backend ('auto', 'torch' or 'triton')."""
    _forced.append(_check_name(name))
    try:
        yield
    finally:
        _forced.pop()


def set_backend(name: str) -> None:
    """Force a backend for the rest of the process (what the ``trainer.backend`` config does)."""
    _forced[:] = [_check_name(name)]


def requested() -> str:
    """The backend asked for: the innermost ``force()``, else ``BLOCKZOO_BACKEND``, else 'auto'."""
    name = _forced[-1] if _forced else None
    if name is None:
        name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if name not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={name!r} is not a backend; expected one of {', '.join(BACKENDS)}")
    return name


def interpreting() -> bool:
    """True when Triton kernels run on the CPU through ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _probe_triton() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as e:  # a broken install must fall back, not crash
        return False, f"triton failed to import ({type(e).__name__}: {e})"
    return True, "triton " + triton.__version__


_TRITON_STATUS = _probe_triton()


def triton_status() -> tuple[bool, str]:
    """(importable, reason) for Triton, probed once at import."""
    return _TRITON_STATUS


def warn_once(op: str, reason: str) -> None:
    """Emit one :class:`BlockzooFallbackWarning` per (op, reason)."""
    if (op, reason) in _warned or torch.compiler.is_compiling():
        return
    _warned.add((op, reason))
    warnings.warn(f"blockzoo.ops.{op}: {reason}; using the PyTorch path", BlockzooFallbackWarning,
                  stacklevel=3)


def _fast_reason(op: str, tensors: tuple[torch.Tensor, ...], dtypes: tuple[torch.dtype, ...],
                 forced: bool) -> str | None:
    """Why the Triton path cannot run (None when it can)."""
    x = tensors[0]
    if not x.is_cuda and not (forced and interpreting()):  # first: on a CPU, installing triton changes nothing
        return f"tensor on {x.device.type}, the Triton path needs a CUDA tensor"
    ok, why = triton_status()
    if not ok:
        return why
    for t in tensors:
        if t.device != x.device:
            return f"tensors on different devices ({x.device} and {t.device})"
    if x.dtype not in dtypes:
        return f"dtype {x.dtype} is not supported (supported: {', '.join(str(d) for d in dtypes)})"
    broken = _broken.get((op, x.device.type, x.dtype))
    if broken is not None:
        return broken
    return None


def _load_compiled_paths() -> dict[str, list[tuple[int | None, str]]]:
    path = os.environ.get(COMPILED_PATHS_ENV) or str(Path(__file__).with_name("compiled_paths.json"))
    with open(path) as f:
        table = json.load(f)["ops"]
    return {op: [(limit, choice) for limit, choice in rules] for op, rules in table.items()}


COMPILED_PATHS = _load_compiled_paths()


def compiled_path(op: str, row: int | None = None) -> str:
    """The path ``op`` takes inside a ``torch.compile`` graph (backend 'auto'), for rows of ``row`` elements.

    'torch' hands Inductor the traceable PyTorch path to fuse with its neighbours; 'triton' keeps our
    kernel. The table (``compiled_paths.json``, or the file named by ``BLOCKZOO_COMPILED_PATHS``) is
    written by ``benchmarks/bench_compiled_parts.py`` from same-run measurements: per op, rules
    ``[max_row, path]`` in order, the first whose ``max_row`` is None or >= ``row`` applies.
    """
    for limit, choice in COMPILED_PATHS.get(op, ()):
        if limit is None or row is None or row <= limit:
            return choice
    return "triton"


def choose(op: str, *tensors: torch.Tensor,
           dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32),
           unsupported: str | None = None) -> str:
    """'triton' or 'torch' for this call. ``unsupported`` is an op-specific reason to fall back.

    Inside a compiled graph with the backend left on 'auto', ``compiled_path`` decides first: where
    Inductor's fusion of the PyTorch path was measured faster, that path is traced (no warning).
    """
    want = requested()
    if want == "torch":
        return _record(op, "torch")
    if want == "auto" and torch.compiler.is_compiling() and tensors and tensors[0].dim() > 0:
        if compiled_path(op, tensors[0].shape[-1]) == "torch":
            return "torch"
    forced = want == "triton"
    reason = unsupported or _fast_reason(op, tensors, dtypes, forced)
    if reason is None:
        return _record(op, "triton")
    if forced:
        raise BackendUnavailableError(f"blockzoo.ops.{op}: backend 'triton' was forced but cannot "
                                      f"run: {reason}")
    warn_once(op, reason)
    return _record(op, "torch")


def report_failure(op: str, x: torch.Tensor, exc: BaseException) -> None:
    """A fast kernel failed to compile or launch: remember it, warn once, and let the caller fall back."""
    if requested() == "triton":
        raise exc
    reason = f"the Triton kernel failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    _broken[(op, x.device.type, x.dtype)] = reason
    warn_once(op, reason)


def _record(op: str, path: str) -> str:
    if not torch.compiler.is_compiling():
        _last_path[op] = path
    return path


def run_fast(op: str, x: torch.Tensor, fast, *args, **kwargs):
    """Call a fast kernel; a compile or launch failure is reported once and gives None (fall back)."""
    if torch.compiler.is_compiling():
        return fast(*args, **kwargs)
    try:
        return fast(*args, **kwargs)
    except (ValueError, TypeError):
        raise  # bad input: the caller's error, not a kernel failure
    except Exception as e:
        report_failure(op, x, e)
        return None


def last_path(op: str) -> str | None:
    """Which path the last call of ``op`` took ('triton', 'torch', ...), or None if never called."""
    return _last_path.get(op)


def record_path(op: str, path: str) -> None:
    """Record the path an op took (for ops with more paths than triton/torch)."""
    _record(op, path)


def reset() -> None:
    """Forget warnings, failures and recorded paths (for tests)."""
    _warned.clear()
    _broken.clear()
    _last_path.clear()
