"""Simplicial embeddings (Lavoie et al., 2022): the features split into L groups, each a softmax (a simplex)."""
from __future__ import annotations

import torch
from torch import nn

from blockzoo import ops


class SimplicialEmbedding(nn.Module):
    """Splits the last dim (width E) into ``L`` groups of E / L features and takes a softmax within each group.

    ``temperature`` divides the features first: below 1 the groups approach one-hot, above 1 uniform
    (None: 1). No parameters; the input is left unchanged.
    """

    def __init__(self, L: int, temperature: float | None = None):
        super().__init__()
        if isinstance(L, bool) or not isinstance(L, int) or L < 1:
            raise ValueError(f"L must be a positive int (the number of simplices), got {L!r}")
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                        or not temperature > 0):
            raise ValueError(f"temperature must be a positive number or None, got {temperature!r}")
        self.L = L
        self.temperature = None if temperature is None else float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., E) -> (..., E), each of the L consecutive groups of E / L features summing to 1."""
        if x.dim() < 1 or x.shape[-1] % self.L:
            raise ValueError(f"SimplicialEmbedding: the last dim of x {tuple(x.shape)} must be divisible by L={self.L}")
        groups = x.reshape(*x.shape[:-1], self.L, x.shape[-1] // self.L)
        if self.temperature is not None:
            groups = groups / self.temperature
        return ops.softmax(groups, dim=-1).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"L={self.L}, temperature={self.temperature}"
