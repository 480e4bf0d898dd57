"""Activations and their derivatives as Triton device functions, shared by the fused kernels.

``ACT`` is a constexpr name from ``torch_ref.ACTIVATIONS``; the branch is chosen at compile time.
Inputs are float32 tensors (the pre-activation ``z``); outputs are float32. The constants match
``torch_ref`` (leaky slope, StarReLU scale and bias, SmeLU's beta); derivatives at 0 match PyTorch's autograd
(relu-like activations have slope 0 there, leaky_relu has slope 0.01).
"""
from __future__ import annotations

import triton
import triton.language as tl

from blockzoo.ops import torch_ref

_SQRT1_2 = tl.constexpr(0.7071067811865476)  # 1/sqrt(2)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1/sqrt(2*pi)
_TANH_C = tl.constexpr(0.7978845608028654)  # sqrt(2/pi)
_TANH_K = tl.constexpr(0.044715)
_LEAKY = tl.constexpr(torch_ref.LEAKY_RELU_SLOPE)
_STAR_SCALE = tl.constexpr(torch_ref.STAR_RELU_SCALE)
_STAR_BIAS = tl.constexpr(torch_ref.STAR_RELU_BIAS)
_SMELU_BETA = tl.constexpr(torch_ref.SMELU_BETA)


@triton.jit
def act_fwd(z, ACT: tl.constexpr):
    """activation(z) for the constexpr name ``ACT``."""
    if ACT == "none":
        y = z
    elif ACT == "relu":
        y = tl.maximum(z, 0.0)
    elif ACT == "gelu":
        y = 0.5 * z * (1.0 + tl.math.erf(z * _SQRT1_2))
    elif ACT == "gelu_tanh":
        # 0.5 z (1 + tanh(u)) == z * sigmoid(2u): no cancellation for negative z
        u = _TANH_C * (z + _TANH_K * z * z * z)
        y = z * tl.sigmoid(2.0 * u)
    elif ACT == "silu":
        y = z * tl.sigmoid(z)
    elif ACT == "squared_relu":
        r = tl.maximum(z, 0.0)
        y = r * r
    elif ACT == "leaky_relu":
        y = tl.where(z > 0.0, z, z * _LEAKY)
    elif ACT == "star_relu":
        r = tl.maximum(z, 0.0)
        y = _STAR_SCALE * r * r + _STAR_BIAS
    else:
        tl.static_assert(ACT == "smelu", "unknown activation")
        r = tl.maximum(z + _SMELU_BETA, 0.0)
        y = tl.where(z >= _SMELU_BETA, z, r * r * (0.25 / _SMELU_BETA))
    return y


@triton.jit
def act_grad(z, ACT: tl.constexpr):
    """d activation / dz at ``z`` for the constexpr name ``ACT``."""
    if ACT == "none":
        d = tl.full(z.shape, 1.0, tl.float32)
    elif ACT == "relu":
        d = tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == "gelu":
        d = 0.5 * (1.0 + tl.math.erf(z * _SQRT1_2)) + z * tl.exp(-0.5 * z * z) * _INV_SQRT_2PI
    elif ACT == "gelu_tanh":
        u = _TANH_C * (z + _TANH_K * z * z * z)
        s = tl.sigmoid(2.0 * u)
        du = _TANH_C * (1.0 + 3.0 * _TANH_K * z * z)
        d = s + 2.0 * z * s * (1.0 - s) * du
    elif ACT == "silu":
        s = tl.sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    elif ACT == "squared_relu":
        d = 2.0 * tl.maximum(z, 0.0)
    elif ACT == "leaky_relu":
        d = tl.where(z > 0.0, 1.0, _LEAKY)
    elif ACT == "star_relu":
        d = 2.0 * _STAR_SCALE * tl.maximum(z, 0.0)
    else:
        tl.static_assert(ACT == "smelu", "unknown activation")
        d = tl.where(z >= _SMELU_BETA, 1.0, tl.maximum(z + _SMELU_BETA, 0.0) * (0.5 / _SMELU_BETA))
    return d
