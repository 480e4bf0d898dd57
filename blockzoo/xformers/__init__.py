"""A home for xFormers' components-era models: their configs and weights load into blockzoo.

>>> model = blockzoo.from_xformers(block_configs, xformers_model.state_dict())
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo.xformers.config_map import to_blockzoo
from blockzoo.xformers.model import XFormersStack, XFormersStackConfig
from blockzoo.xformers.weights import convert, random_features


def from_xformers(config: Any, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The blockzoo model equivalent to ``xFormer.from_config(xFormerConfig(config))``.

    ``config``: the list of block-config dicts ``xFormerConfig`` took, a dict with ``stack_configs``
    (and ``tie_embedding_weights`` / ``weight_init``), or a YAML/JSON file of either. ``state_dict``:
    an xFormers model's parameters, loaded through the key map (mismatches raise ValueError); add
    ``random_features(xformers_model)`` to it for favor's feature matrices (drawn at its first call).
    The model's ``forward(src, tgt=None)`` returns what the xFormers model returned.
    """
    from blockzoo.api import build_model

    model = build_model(to_blockzoo(config))
    if state_dict is not None:
        model.load_state_dict(convert(model, state_dict))
    return model


__all__ = ["from_xformers", "to_blockzoo", "convert", "random_features", "XFormersStack", "XFormersStackConfig"]
