"""Plain PyTorch versions of every op: the fallback path and the test oracle.

Conventions shared by every path:
- a bool mask is True where a score is *kept* (as ``attn_mask`` in ``F.scaled_dot_product_attention``);
  a float mask is added to the scores (``-inf`` removes a score);
- ``causal`` keeps score (i, j) when j <= i (top-left aligned, as SDPA's ``is_causal``);
- a row with no kept score gives zeros (softmax, log-softmax and attention alike; also a row of length 0
  and attention with no keys), never NaN;
- otherwise NaN and inf follow PyTorch: a NaN (or +inf) among a row's kept scores gives a NaN row.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from blockzoo.ops.masks import causal_keep, repeat_kv

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu", "squared_relu", "leaky_relu", "star_relu", "smelu")
LEAKY_RELU_SLOPE = 0.01
SMELU_BETA = 2.0  # the half-width of SmeLU's quadratic zone under the name "smelu" (Shamir et al., 2022)
STAR_RELU_SCALE = 0.8944271909999159  # 1/sqrt(1.25): MetaFormer's StarReLU, unit variance
STAR_RELU_BIAS = -0.4472135954999579


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply the activation called ``name`` (see ``ACTIVATIONS``)."""
    if name == "none":
        return x
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu(x)
    if name == "squared_relu":
        return F.relu(x).square()
    if name == "leaky_relu":
        return F.leaky_relu(x, LEAKY_RELU_SLOPE)
    if name == "star_relu":
        return STAR_RELU_SCALE * F.relu(x).square() + STAR_RELU_BIAS
    if name == "smelu":
        return smelu(x, SMELU_BETA)
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")


def smelu(x: torch.Tensor, beta: float = SMELU_BETA) -> torch.Tensor:
    """Smooth ReLU: 0 for x <= -beta, (x + beta)² / (4 beta) for |x| < beta, x for x >= beta (C¹ at ±beta)."""
    if not beta > 0:
        raise ValueError(f"smelu beta must be > 0, got {beta!r}")
    r = (x + beta).clamp(min=0.0)
    return torch.where(x >= beta, x, r * r / (4.0 * beta))  # r * r, not square(): no fp32 cast under autocast


def masked_scores(x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores in float32 (or float64) with masked entries at -inf, and the kept-entry mask (or None)."""
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    keep = None
    if causal:
        keep = causal_keep(x.shape[-2], x.shape[-1], x.device)
    if mask is not None:
        if mask.dtype == torch.bool:
            keep = mask if keep is None else keep & mask
        else:
            x = x + mask.to(x.dtype)
    if keep is not None:
        x = x.masked_fill(~keep, float("-inf"))
    return x, keep


def softmax(x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None, causal: bool = False,
            log: bool = False) -> torch.Tensor:
    """(Log-)softmax over ``dim`` with an optional mask; fully masked rows give zeros, NaN propagates."""
    if x.dim() == 0:
        return softmax(x.reshape(1), -1, None if mask is None else mask.reshape(1), causal, log).reshape(())
    last = dim % x.dim() == x.dim() - 1
    if not last:
        x = x.movedim(dim, -1)
        if mask is not None:  # align the mask's dims with x's before moving ``dim``
            mask = mask.reshape((1,) * (x.dim() - mask.dim()) + tuple(mask.shape)).movedim(dim, -1)
    out = _softmax_last(x, mask, causal, log)
    return out if last else out.movedim(-1, dim)


def _softmax_last(x: torch.Tensor, mask: torch.Tensor | None, causal: bool, log: bool) -> torch.Tensor:
    """(Log-)softmax over the last dim of ``x`` (see :func:`softmax`)."""
    s, _ = masked_scores(x, mask, causal)
    if s.shape[-1] == 0:  # nothing to normalize (amax needs a non-empty dim)
        return s.to(x.dtype, copy=True)
    row_max = s.amax(-1, keepdim=True)
    empty = torch.isneginf(row_max)
    shifted = s - torch.where(empty, torch.zeros_like(row_max), row_max)
    if log:
        out = shifted - torch.logsumexp(shifted, -1, keepdim=True)
    else:
        e = shifted.exp()
        out = e / e.sum(-1, keepdim=True)
    return torch.where(empty, torch.zeros_like(out), out).to(x.dtype)


def layer_norm(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm computed in float32 (float64 stays float64)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = weight.to(acc) if weight is not None else None
    b = bias.to(acc) if bias is not None else None
    return F.layer_norm(x.to(acc), normalized_shape, w, b, eps).to(x.dtype)


def rms_norm(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None = None,
             eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in float32 (float64 stays float64)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dims = tuple(range(-len(normalized_shape), 0))
    xf = x.to(acc)
    y = xf * torch.rsqrt(xf.square().mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(acc)
    return y.to(x.dtype)


def dropout_bias_act(x: torch.Tensor, bias: torch.Tensor | None = None, p: float = 0.0,
                     activation_name: str = "gelu", training: bool = True,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """dropout(act(x + bias)). ``keep`` (bool, x's shape) replaces the random mask when given."""
    y = x if bias is None else x + bias
    y = activation(y, activation_name)
    if not training or p == 0.0:
        return y
    if keep is None:
        return F.dropout(y, p, training=True)
    return y * keep.to(y.dtype) / (1.0 - p)


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               activation_name: str = "gelu") -> torch.Tensor:
    """act(x @ weight.T + bias)."""
    return activation(F.linear(x, weight, bias), activation_name)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                               ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """cross_entropy(hidden @ weight.T, target) with float32 logits."""
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False, scale: float | None = None, dropout_p: float = 0.0,
              softcap: float | None = None, sink_logits: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v with explicit scores; fully masked rows give zeros.

    ``softcap`` c: the scores become c · tanh(scores / c) before the mask. ``sink_logits`` (H,): one
    logit per query head that joins each row's softmax denominator and contributes no value (a row
    with nothing kept still gives zeros).
    """
    scale = (1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0) if scale is None else scale
    k = repeat_kv(k, q.shape[1])
    v = repeat_kv(v, q.shape[1])
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if sink_logits is None:
        p = softmax(scores, -1, mask, causal)
    else:
        s, _ = masked_scores(scores, mask, causal)
        sink = sink_logits.to(s.dtype).reshape(-1, 1, 1).expand(*s.shape[:-1], 1)
        p = torch.softmax(torch.cat([s, sink], -1), -1)[..., :-1]
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p, training=True)
    return torch.matmul(p, v.to(acc)).to(q.dtype)
