"""Input projections: separate q/k/v projections of (query, key, value) inputs (xFormers' ``InputProjection``),
and the embedding projection that maps an embedding's width to the model's (xFormers' ``embedding_projector``)."""
from __future__ import annotations

import torch
from torch import nn


def _width(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class InputProjection(nn.Module):
    """Projects query, key and value inputs with three linear maps ``q_proj``, ``k_proj``, ``v_proj``.

    Widths: q_proj dim_model -> dim_key, k_proj dim_key_input -> dim_key, v_proj dim_value_input -> dim_value
    (each unset width defaults to dim_model). ``bias``: one flag or a (q, k, v) triple. ``shared_weight``:
    one weight for the three maps (their widths must then agree), biases stay separate.
    """

    def __init__(self, dim_model: int, dim_key: int | None = None, dim_value: int | None = None, *,
                 dim_key_input: int | None = None, dim_value_input: int | None = None,
                 bias: bool | tuple[bool, bool, bool] = True, shared_weight: bool = False):
        super().__init__()
        d_in = _width("dim_model", dim_model)
        d_k = d_in if dim_key is None else _width("dim_key", dim_key)
        d_v = d_in if dim_value is None else _width("dim_value", dim_value)
        k_in = d_in if dim_key_input is None else _width("dim_key_input", dim_key_input)
        v_in = d_in if dim_value_input is None else _width("dim_value_input", dim_value_input)
        flags = (bias,) * 3 if isinstance(bias, bool) else tuple(bias)
        if len(flags) != 3 or not all(isinstance(b, bool) for b in flags):
            raise TypeError(f"bias must be a bool or a (q, k, v) triple of bools, got {bias!r}")
        self.q_proj = nn.Linear(d_in, d_k, bias=flags[0])
        self.k_proj = nn.Linear(k_in, d_k, bias=flags[1])
        self.v_proj = nn.Linear(v_in, d_v, bias=flags[2])
        if shared_weight:
            shapes = {"q_proj": (d_k, d_in), "k_proj": (d_k, k_in), "v_proj": (d_v, v_in)}
            if len(set(shapes.values())) != 1:
                raise ValueError(f"shared_weight=True needs equal projection shapes, got {shapes}")
            self.k_proj.weight = self.q_proj.weight
            self.v_proj.weight = self.q_proj.weight

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None,
                value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v) = (q_proj(query), k_proj(key), v_proj(value)); key defaults to query, value to key."""
        key = query if key is None else key
        value = key if value is None else value
        return self.q_proj(query), self.k_proj(key), self.v_proj(value)


class EmbeddingProjection(nn.Linear):
    """A linear map from an embedding's width ``dim_embedding`` to the model's ``dim_model`` (weight, bias)."""

    def __init__(self, dim_embedding: int, dim_model: int, bias: bool = True):
        super().__init__(_width("dim_embedding", dim_embedding), _width("dim_model", dim_model), bias=bias)

    @classmethod
    def between(cls, dim_embedding: int, dim_model: int, bias: bool = True) -> nn.Module:
        """The projection, or ``nn.Identity`` when the widths already agree (as xFormers added it)."""
        if dim_embedding == dim_model:
            _width("dim_model", dim_model)
            return nn.Identity()
        return cls(dim_embedding, dim_model, bias)
