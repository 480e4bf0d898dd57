"""blockzoo: transformer building blocks registered by name, built from Hydra/OmegaConf configs.

>>> import blockzoo
>>> model = blockzoo.build_model("tiny_lm", attention="local")
"""
from blockzoo import ops
from blockzoo.config import (AttentionConfig, BlockConfig, ConfigError, EmbeddingConfig, FeedforwardConfig,
                             ModelConfig, NormConfig, TaskConfig, TrainerConfig)
from blockzoo.composition import compose
from blockzoo.ops.backend import BlockzooFallbackWarning, BlockzooWarning
from blockzoo.plugins import BlockzooPluginWarning
from blockzoo.registry import (register_attention, register_block, register_embedding, register_feedforward,
                               register_model, register_norm, register_task, registry)
from blockzoo.blocks.attention.base import Attention  # noqa: E402  (registers nothing by itself)
from blockzoo import blocks  # noqa: E402,F401  (registers the built-in components)
from blockzoo.blocks import FusedDropoutBias, FusedLinear  # noqa: E402
from blockzoo import tasks  # noqa: E402,F401
from blockzoo.api import build, build_model, describe, list_components, list_models, load, save  # noqa: E402
from blockzoo.xformers import from_xformers  # noqa: E402  (registers the xformers_stack model)

__version__ = "0.1.0"
__all__ = ["build", "build_model", "from_xformers", "compose", "describe", "list_components", "list_models", "load", "save", "registry",
           "register_attention", "register_feedforward", "register_norm", "register_embedding", "register_block",
           "register_model", "register_task", "Attention", "AttentionConfig", "FeedforwardConfig", "NormConfig",
           "EmbeddingConfig", "BlockConfig", "ModelConfig", "TaskConfig", "TrainerConfig", "ops",
           "BlockzooWarning", "BlockzooFallbackWarning", "BlockzooPluginWarning", "ConfigError", "FusedLinear",
           "FusedDropoutBias"]
