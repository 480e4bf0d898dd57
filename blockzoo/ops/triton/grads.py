"""Parameter gradients reduced in float32: the GEMM that sums a weight gradient over rows.

A half-precision ``a @ b`` rounds its result to half precision, and cuBLAS may add split-K partial
sums in half precision too (``allow_fp16/bf16_reduced_precision_reduction``). ``mm_fp32`` returns the
float32 sum of half-precision operands, so a gradient accumulated over chunks, or over many rows, is
rounded to the parameter's dtype once, by the caller, as PyTorch's autocast gradients are.
"""
from __future__ import annotations

import torch

from blockzoo.ops import autocast

_HALF = (torch.float16, torch.bfloat16)
_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()  # torch.mm(..., out_dtype=): CUDA, torch >= 2.8


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` accumulated and returned in float32 (float64 stays float64). On CUDA half-precision
    operands go to cuBLAS as they are (``out_dtype``); elsewhere they are upcast first. Autocast is off
    inside: its ``mm`` would lower the operands."""
    if a.dtype in _HALF and a.is_cuda and _OUT_DTYPE:
        return torch.mm(a, b, out_dtype=torch.float32)
    with autocast.disabled(a):
        return torch.mm(a.float(), b.float()) if a.dtype in _HALF else torch.mm(a, b)
