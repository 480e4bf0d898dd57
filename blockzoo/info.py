"""``python -m blockzoo.info``: versions, device, Triton and compiled-extension availability, and the
path each op would take on this machine's default device.

``python -m blockzoo.info model=gpt_small_hybrid [overrides ...]`` adds the model's per-layer report: each
block's attention and the path ``masked_attention`` takes there on a batch of the task (one forward).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
import warnings

import torch

import blockzoo
from blockzoo.ops import backend
from blockzoo.ops.catalog import FAST_OPS, SPARSE_OPS, TRITON_OPS
from blockzoo.ops.sparse.ops import use_extension

PACKAGES = ("torch", "triton", "hydra-core", "omegaconf", "safetensors")


def versions() -> dict[str, str]:
    """Python, blockzoo and the main dependencies' versions ('not installed' when absent)."""
    out = {"python": platform.python_version(), "blockzoo": blockzoo.__version__}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"CUDA {torch.version.cuda}: " + ", ".join(names)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def extension_status() -> tuple[bool, str]:
    """(available, detail) for the compiled extension ``blockzoo._C``."""
    try:
        module = importlib.import_module("blockzoo._C")
    except Exception as e:  # not built, or built against another torch
        return False, f"{type(e).__name__}: {e}"
    return True, getattr(module, "__file__", "blockzoo._C")


def op_paths(device: torch.device) -> dict[str, str]:
    """For every op with a fast path, the path it would take for a small float32 tensor on ``device``:
    ``backend.choose`` (Triton or PyTorch), or for the sparse ops the compiled extension or PyTorch."""
    x = torch.zeros(2, 8, device=device)
    paths = {}
    for op in FAST_OPS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                path = sparse_path(op, device) if op in SPARSE_OPS else backend.choose(op, x)
            except backend.BackendUnavailableError as e:
                path = f"error ({e})"
        why = "; ".join(str(w.message).split(": ", 1)[-1].removesuffix("; using the PyTorch path") for w in caught)
        paths[op] = f"{path} ({why})" if why else path
        if op in TRITON_OPS and path == "triton" and backend.requested() == "auto":
            paths[op] += f"; inside torch.compile: {compiled_paths(op)}"
    paths["masked_attention"] += "; per mask: blockzoo.ops.explain(q, k, v, mask)"
    return paths


def compiled_paths(op: str) -> str:
    """The compiled-graph rules of ``op`` in words (``backend.compiled_path``'s table)."""
    rules = backend.COMPILED_PATHS.get(op, [(None, "triton")])
    return ", ".join(f"{path} up to rows of {limit}" if limit is not None else path for limit, path in rules)


def sparse_path(op: str, device: torch.device) -> str:
    """'extension' when blockzoo._C has kernels for ``device`` (and the torch backend is not forced), else 'torch'."""
    return "extension" if use_extension(op, device) else "torch"


def report() -> str:
    """The capability report as text."""
    device = default_device()
    triton_ok, triton_why = backend.triton_status()
    ext_ok, ext_why = extension_status()
    lines = ["versions:"] + [f"  {k:<12} {v}" for k, v in versions().items()]
    lines += ["", f"device:       {device_description(device)}",
              f"triton:       {'available' if triton_ok else 'unavailable'} ({triton_why})",
              f"blockzoo._C:  {'available' if ext_ok else 'unavailable'} ({ext_why})",
              f"backend:      {backend.requested()} (set with {backend.ENV_VAR}=auto|torch|triton)",
              *([] if device.type == "cuda" else ["fast paths:   the Triton kernels need a CUDA GPU and this "
                                                  "machine has none: those ops take their PyTorch paths"]),
              "", f"op paths on {device.type}:"]
    lines += [f"  {op:<28} {path}" for op, path in op_paths(device).items()]
    return "\n".join(lines)


def model_report(overrides: list[str]) -> str:
    """The per-layer pattern and attention paths of the model these overrides compose (on the default device)."""
    from blockzoo.layer_paths import layer_paths
    from blockzoo.tasks import build_task
    from blockzoo.trainer.model import build_for_task

    device = default_device()
    cfg = blockzoo.compose(overrides)
    task = build_task(cfg.task)
    torch.manual_seed(cfg.seed)
    cfg, model = build_for_task(cfg, task)
    model.to(device)
    batch = {k: v.to(device) for k, v in task.batch("val", 0, 1).items()}
    lines = [f"model {cfg.model.name} ({' '.join(overrides)}) on {device.type}, task {task.cfg.name} "
             f"(seq_len {task.cfg.seq_len}):"]
    lines += getattr(model, "layer_lines", lambda: [])()
    lines += ["attention per block (one forward, eval mode):"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", backend.BlockzooFallbackWarning)  # the op paths above say why
        lines += [p.line() for p in layer_paths(model, batch)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The capability report; with overrides (``model=...``), the model's per-layer report after it."""
    argv = sys.argv[1:] if argv is None else argv
    print(report())
    if argv:
        print()
        print(model_report(argv))


if __name__ == "__main__":
    main()
