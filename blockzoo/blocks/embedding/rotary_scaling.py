"""Rotary frequencies: partial rotary and the context-extension scalings (linear, NTK-aware, YaRN).

- ``fraction``: only the first ``fraction * head_dim`` dims of each head rotate (GPT-NeoX's partial
  rotary); the frequencies follow from the rotated width r: base^(-2i / r), i < r / 2.
- ``linear`` (position interpolation, Chen et al., 2023): every frequency divided by ``factor``.
- ``ntk`` (NTK-aware, bloc97, 2023): the base becomes base · factor^(r / (r - 2)), so the lowest
  frequency is interpolated by ``factor`` and the highest barely moves.
- ``yarn`` (Peng et al., 2023, "YaRN"): per dimension, with ρ = original_max_seq_len / wavelength (the
  turns it makes over the trained length) and γ = clamp((ρ - beta_slow) / (beta_fast - beta_slow), 0, 1),
  the frequency is (1 - γ) · θ / factor + γ · θ: slow dims interpolate, fast dims keep θ. The attention
  temperature multiplies cos and sin (so the logits by its square) by ``mscale``, by default
  0.1 · ln(factor) + 1.
"""
from __future__ import annotations

import math
from typing import Any

import torch

SCALINGS = ("none", "linear", "ntk", "yarn")


def rotated_dims(head_dim: int, fraction: float, path: str = "embedding") -> int:
    """How many dims of a head rotate: ``fraction * head_dim``, a whole, even, positive number."""
    if not 0 < fraction <= 1:
        raise ValueError(f"{path}.fraction={fraction}: expected a fraction in (0, 1]")
    exact = fraction * head_dim
    n = int(round(exact))
    if abs(n - exact) > 1e-6 or n == 0:
        raise ValueError(f"{path}.fraction={fraction} of head_dim={head_dim} is {exact:g} dims; expected a whole, "
                         "positive, even number of rotated dims")
    if n % 2:
        raise ValueError(f"{path}.fraction={fraction} of head_dim={head_dim} rotates {n} dims, an odd number; "
                         "rotary turns pairs of dims (pick a fraction giving an even count)")
    return n


def check_scaling(scaling: str, factor: float, original_max_seq_len: int, beta_fast: float, beta_slow: float,
                  mscale: float | None, rotated: int, path: str = "embedding") -> None:
    """ValueError naming the config path for settings the scaling cannot use."""
    if scaling not in SCALINGS:
        raise ValueError(f"{path}.scaling={scaling!r}: expected one of {', '.join(SCALINGS)}")
    if scaling == "none":
        return
    if not factor >= 1:
        raise ValueError(f"{path}.factor={factor}: rotary scaling '{scaling}' needs factor >= 1")
    if scaling == "ntk" and rotated <= 2:
        raise ValueError(f"{path}.scaling='ntk' needs more than 2 rotated dims, got {rotated}")
    if scaling == "yarn":
        if original_max_seq_len < 1:
            raise ValueError(f"{path}.original_max_seq_len={original_max_seq_len}: yarn needs the trained length")
        if not beta_fast > beta_slow > 0:
            raise ValueError(f"{path}.beta_fast={beta_fast}, {path}.beta_slow={beta_slow}: yarn needs "
                             "beta_fast > beta_slow > 0")
        if mscale is not None and not mscale > 0:
            raise ValueError(f"{path}.mscale={mscale}: expected > 0 (or None: 0.1 * ln(factor) + 1)")


def inverse_frequencies(rotated: int, base: float, scaling: str = "none", factor: float = 1.0,
                        original_max_seq_len: int = 0, beta_fast: float = 32.0,
                        beta_slow: float = 1.0) -> torch.Tensor:
    """The (rotated / 2,) float64 angular frequencies of the rotated dims under ``scaling``."""
    exponent = torch.arange(0, rotated, 2, dtype=torch.float64) / rotated
    if scaling == "ntk":
        base = base * factor ** (rotated / (rotated - 2))
    theta = base ** -exponent
    if scaling == "linear":
        return theta / factor
    if scaling == "yarn":
        turns = original_max_seq_len * theta / (2 * math.pi)  # original length / wavelength
        gamma = ((turns - beta_slow) / (beta_fast - beta_slow)).clamp(0.0, 1.0)
        return (1 - gamma) * theta / factor + gamma * theta
    return theta


def attention_scale(scaling: str, factor: float, mscale: float | None) -> float:
    """What cos and sin are multiplied by: YaRN's temperature (0.1 · ln(factor) + 1 unless given), else 1."""
    if scaling != "yarn":
        return 1.0
    if mscale is not None:
        return float(mscale)
    return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def rotary_options(embedding_cfg: Any, max_seq_len: int, path: str = "model.embedding") -> dict[str, Any] | None:
    """The :class:`Rotary` keyword arguments a rotary embedding config gives (None: not a rotary config).
    ``original_max_seq_len`` 0 means the model's ``max_seq_len``."""
    if not hasattr(embedding_cfg, "fraction") or not hasattr(embedding_cfg, "scaling"):
        return None
    return {"fraction": float(embedding_cfg.fraction), "scaling": str(embedding_cfg.scaling),
            "factor": float(embedding_cfg.factor),
            "original_max_seq_len": int(embedding_cfg.original_max_seq_len or max_seq_len),
            "beta_fast": float(embedding_cfg.beta_fast), "beta_slow": float(embedding_cfg.beta_slow),
            "mscale": None if embedding_cfg.mscale is None else float(embedding_cfg.mscale), "path": path}
