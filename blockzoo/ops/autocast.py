"""Autocast policies: under ``torch.autocast`` each op runs as the PyTorch op it stands in for.

PyTorch casts the floating inputs of an op by the op's policy for the device type
(``aten/src/ATen/autocast_mode.cpp``): ``lower`` to the autocast dtype (linear, matmul,
scaled_dot_product_attention on CUDA and the CPU), ``fp32`` to float32 (on CUDA softmax, log_softmax,
layer_norm, pow, the losses; on the CPU the losses but not softmax or layer_norm); an op on no list runs
in its inputs' dtypes, with type promotion. ``POLICIES`` gives each blockzoo op the policy of the PyTorch
op or composition it replaces, per device type, and ``cast`` applies it at the op's entry (one line;
off autocast it costs one ``torch.is_autocast_enabled`` call). float64 is never cast, as in PyTorch.
``tests/ops/test_autocast.py`` checks every entry against PyTorch's own result dtype.
"""
from __future__ import annotations

import contextlib
import functools

import torch

LOWER, FP32, PROMOTE, KEEP = "lower", "fp32", "promote", "keep"

# op -> (CUDA policy, CPU policy); the CUDA one also stands for the other accelerators (their lists are CUDA's)
POLICIES: dict[str, tuple[str, str]] = {
    "masked_attention": (LOWER, LOWER),  # scaled_dot_product_attention: q, k, v (masks: see below)
    "softmax": (FP32, KEEP),  # softmax / log_softmax: fp32 on CUDA only
    "layer_norm": (FP32, KEEP),  # layer_norm: fp32 on CUDA only
    "rms_norm": (KEEP, KEEP),  # rms_norm: on no list; computes in fp32, returns the input's dtype
    "linear_act": (LOWER, LOWER),  # linear, then the activation (see FP32_ACTIVATIONS)
    "fused_linear_cross_entropy": (LOWER, LOWER),  # linear, then cross_entropy (fp32 on both: our loss is fp32)
    "dropout_bias_act": (PROMOTE, PROMOTE),  # x + bias (type promotion), activation, dropout
}

# Masks are not cast (a copy per call would also miss masked_attention's per-mask plan cache): the ops read an
# additive mask in its own dtype and convert it where it is used, to the scores' dtype (as SDPA casts attn_mask)
# or to float32.

# activations whose PyTorch form calls an op of the device type's fp32 list (square -> pow on CUDA): the
# composition returns float32 under autocast
FP32_ACTIVATIONS: tuple[frozenset[str], frozenset[str]] = (frozenset({"squared_relu", "star_relu"}), frozenset())


def _device_type(t: object) -> str | None:
    """t's device type, None for a non-tensor or a device autocast does not know (meta); the two common
    answers without building a torch.device."""
    if not isinstance(t, torch.Tensor):
        return None
    if t.is_cuda:
        return "cuda"
    if t.is_cpu:
        return "cpu"
    device = t.device.type
    return device if torch.amp.is_autocast_available(device) else None


def _column(device: str) -> int:
    """The index of ``device``'s entry in POLICIES and FP32_ACTIVATIONS."""
    return 1 if device == "cpu" else 0


def _castable(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _target(policy: str, device: str, tensors: tuple) -> torch.dtype | None:
    if policy == LOWER:
        return torch.get_autocast_dtype(device)
    if policy == FP32:
        return torch.float32
    if policy == PROMOTE:
        dtypes = [t.dtype for t in tensors if _castable(t)]
        return functools.reduce(torch.promote_types, dtypes) if dtypes else None
    return None


def policy(op: str, device: str) -> str:
    """The autocast policy of ``op`` on ``device`` (a device type)."""
    return POLICIES[op][_column(device)]


def cast(op: str, *tensors: object, activation: str | None = None) -> tuple:
    """``tensors`` (the op's tensor arguments, the first one deciding the device type) as ``op`` receives
    them under autocast: floating ones (float64 aside) cast by the op's policy. Unchanged off autocast,
    or when the first is not a tensor (the op's own checks report it). With ``activation``
    (``dropout_bias_act``), one whose PyTorch form returns float32 under autocast casts to float32."""
    device = _device_type(tensors[0])
    if device is None or not torch.is_autocast_enabled(device):
        return tensors
    rule = policy(op, device)
    if activation is not None and activation in FP32_ACTIVATIONS[_column(device)]:
        rule = FP32
    dtype = _target(rule, device, tensors)
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if _castable(t) and t.dtype != dtype else t for t in tensors)


def activation_dtype(x: torch.Tensor, activation: str) -> torch.dtype:
    """The dtype ``activation`` returns for ``x`` in PyTorch under the current autocast: float32 for an
    activation on the device type's fp32 list (see ``FP32_ACTIVATIONS``) under autocast, else x's dtype."""
    device = _device_type(x)
    if device is None or x.dtype == torch.float64 or activation not in FP32_ACTIVATIONS[_column(device)]:
        return x.dtype
    return torch.float32 if torch.is_autocast_enabled(device) else x.dtype


def disabled(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context with autocast off for x's device type (nothing to enter when it is off already): for
    code that computes in float32 on purpose (prefix sums, pseudo-inverses), which autocast would lower."""
    device = _device_type(x)
    if device is None or not torch.is_autocast_enabled(device):
        return contextlib.nullcontext()
    return torch.autocast(device, enabled=False)
