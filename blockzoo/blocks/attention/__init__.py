"""Attention mechanisms: one file per mechanism, each registers itself on import."""
import importlib
import pkgutil

from blockzoo.blocks.attention.base import Attention

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["Attention"]
