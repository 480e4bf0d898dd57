"""Weight-initialisation schemes applied to a built model."""
from __future__ import annotations

import math

import torch
from torch import nn

from blockzoo.blocks.multi_head import MultiHeadAttention
from blockzoo.config import INIT_SCHEMES as SCHEMES
RESIDUAL_OUTPUTS = ("out_proj", "fc2", "w_out")  # projections that write into the residual stream


def _zero_bias(m: nn.Module) -> None:
    if getattr(m, "bias", None) is not None:
        nn.init.zeros_(m.bias)


def _is_residual_output(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in RESIDUAL_OUTPUTS


def _is_value_like(name: str) -> bool:
    """DeepNet scales the feedforward, value and output projections by beta."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf in RESIDUAL_OUTPUTS or leaf in ("fc1", "w_in", "v_proj", "kv_proj") or "feedforward" in name


def init_weights(model: nn.Module, scheme: str, num_layers: int, dim_model: int, deepnorm_beta: float = 1.0) -> None:
    """Initialise every Linear and Embedding of ``model`` with ``scheme`` (see ``SCHEMES``).

    - default: GPT-2; N(0, 0.02), residual output projections scaled by 1/√(2·layers).
    - small: N(0, √(2 / 5d)) (Nguyen & Salazar, 2019).
    - vit / timm: Xavier-uniform / truncated N(0, 0.02) linears, zero biases.
    - moco: Xavier-uniform with q, k, v of a fused projection treated as three matrices.
    - deepnorm: Xavier-normal, feedforward/value/output projections scaled by DeepNet's beta.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"model.init must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    std_small = math.sqrt(2.0 / (5.0 * dim_model))
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding):
            std = std_small if scheme == "small" else 0.02
            if scheme in ("vit", "timm"):
                nn.init.trunc_normal_(m.weight, std=0.02)
            else:
                nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.Linear):
            _init_linear(name, m, scheme, num_layers, std_small, deepnorm_beta)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            _zero_bias(m)
    if scheme == "deepnorm":
        _scale_fused_values(model, deepnorm_beta)


def _scale_fused_values(model: nn.Module, beta: float) -> None:
    """In a fused q/k/v projection, DeepNet's beta applies to the value rows only."""
    for m in model.modules():
        if isinstance(m, MultiHeadAttention) and hasattr(m, "qkv_proj"):
            with torch.no_grad():
                m.qkv_proj.weight[-m.num_kv_heads * m.head_dim:].mul_(beta)


def _init_linear(name: str, m: nn.Linear, scheme: str, num_layers: int, std_small: float, beta: float) -> None:
    w = m.weight
    if scheme == "default":
        std = 0.02 / math.sqrt(2 * num_layers) if _is_residual_output(name) else 0.02
        nn.init.normal_(w, std=std)
    elif scheme == "small":
        nn.init.normal_(w, std=std_small)
    elif scheme == "vit":
        nn.init.xavier_uniform_(w)
    elif scheme == "timm":
        nn.init.trunc_normal_(w, std=0.02)
    elif scheme == "moco":
        if name.endswith("qkv_proj"):
            bound = math.sqrt(6.0 / float(w.shape[0] // 3 + w.shape[1]))
            nn.init.uniform_(w, -bound, bound)
        else:
            nn.init.xavier_uniform_(w)
    elif scheme == "deepnorm":
        nn.init.xavier_normal_(w, gain=beta if _is_value_like(name) else 1.0)
    _zero_bias(m)
