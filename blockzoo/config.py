"""Dataclass configs, validation, Hydra ConfigStore registration and ``compose``.

Every component owns a dataclass config deriving from one of the base classes below. The
same dataclass is stored in Hydra's ConfigStore (``schema/<kind>/<name>``), and the shipped
YAML presets in ``blockzoo/configs/<kind>/`` extend it, so command-line overrides are typed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from blockzoo.plugins import load_plugins
from blockzoo.suggest import close_matches

CONFIG_MODULE = "blockzoo.configs"


# ---------------------------------------------------------------------------------------------
# Base configs. Fields documented with metadata["help"] show up in blockzoo.describe().
# Fields marked "set by the model" are filled in by the model builder when left at 0.
# ---------------------------------------------------------------------------------------------
def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class AttentionConfig:
    """Base config of an attention mechanism (what runs between the q/k/v projections)."""

    name: str = MISSING
    dropout: float = _f(0.0, "dropout on attention probabilities")
    num_heads: int = _f(0, "set by the model")
    head_dim: int = _f(0, "set by the model")
    max_seq_len: int = _f(0, "set by the model")


@dataclass
class FeedforwardConfig:
    """Base config of a position-wise feedforward."""

    name: str = MISSING
    dim_model: int = _f(0, "set by the model")
    hidden_mult: float = _f(4.0, "hidden width as a multiple of dim_model (if hidden_dim is unset)")
    hidden_dim: Optional[int] = _f(None, "explicit hidden width")
    activation: str = _f("gelu", "relu, gelu, gelu_tanh, silu, squared_relu, leaky_relu, star_relu")
    dropout: float = _f(0.0, "dropout after the activation")
    bias: bool = _f(True, "bias in the linear layers")

    def hidden(self) -> int:
        return int(self.hidden_dim) if self.hidden_dim else int(round(self.hidden_mult * self.dim_model))


@dataclass
class NormConfig:
    """Base config of a normalization layer."""

    name: str = MISSING
    dim: int = _f(0, "set by the model")
    eps: float = _f(1e-5, "numerical epsilon")
    affine: bool = _f(True, "learn a scale (and bias where the norm has one)")


@dataclass
class EmbeddingConfig:
    """Base config of a token/position embedding."""

    name: str = MISSING
    vocab_size: int = _f(0, "set by the model")
    dim_model: int = _f(0, "set by the model")
    max_seq_len: int = _f(0, "set by the model")
    dropout: float = _f(0.0, "dropout after the embedding")


@dataclass
class BlockConfig:
    """Base config of a transformer block (attention + feedforward + norms + residuals)."""

    name: str = MISSING
    dim_model: int = _f(0, "set by the model")
    num_heads: int = _f(0, "set by the model")
    num_kv_heads: Optional[int] = _f(None, "grouped-query heads (None = num_heads, 1 = multi-query)")
    residual: str = _f("pre", "pre, post or deepnorm")
    dropout: float = _f(0.0, "residual dropout")
    qkv: str = _f("fused", "fused or separate q/k/v projections")
    bias: bool = _f(True, "bias in projections")
    rotary: bool = _f(False, "apply rotary position embedding to q and k")
    rotary_base: float = _f(10000.0, "rotary frequency base")
    causal: bool = _f(False, "set by the model")
    deepnorm_alpha: float = _f(1.0, "residual scale (set by the model for deepnorm)")
    max_seq_len: int = _f(0, "set by the model")
    attention: Any = None
    feedforward: Any = None
    norm: Any = None
    cross_attention: Any = None


@dataclass
class ModelConfig:
    """Base config of a model: a stack of blocks plus embeddings and heads."""

    name: str = MISSING
    dim_model: int = _f(256, "model width")
    num_layers: int = _f(4, "number of blocks (encoder blocks for encoder_decoder)")
    num_heads: int = _f(4, "attention heads")
    num_kv_heads: Optional[int] = _f(None, "grouped-query heads (None = num_heads, 1 = multi-query)")
    vocab_size: int = _f(256, "vocabulary size (set from the task when 0)")
    max_seq_len: int = _f(256, "longest sequence the model accepts")
    residual: str = _f("pre", "pre, post or deepnorm")
    dropout: float = _f(0.0, "residual and embedding dropout")
    qkv: str = _f("fused", "fused or separate q/k/v projections")
    bias: bool = _f(True, "bias in linear layers")
    tie_embeddings: bool = _f(True, "share the token embedding with the output head")
    init: str = _f("default", "weight init: default, small, vit, timm, moco, deepnorm")
    attention: Any = None
    feedforward: Any = None
    norm: Any = None
    embedding: Any = None


@dataclass
class TaskConfig:
    """Base config of a training task (a deterministic batch generator)."""

    name: str = MISSING
    seq_len: int = _f(128, "sequence length of a batch")
    seed: int = _f(0, "data seed (split and sampling)")


@dataclass
class TrainerConfig:
    """Training loop settings."""

    steps: int = _f(300, "optimizer steps")
    batch_size: int = _f(16, "global batch size (sequences per step)")
    lr: float = _f(3e-3, "peak learning rate")
    min_lr_ratio: float = _f(0.1, "final lr as a fraction of the peak (cosine decay)")
    warmup_steps: int = _f(30, "linear warm-up steps")
    weight_decay: float = _f(0.1, "AdamW weight decay")
    betas: list = _f([0.9, 0.95], "AdamW betas")
    grad_clip: float = _f(1.0, "max global grad norm (0 disables)")
    eval_every: int = _f(100, "steps between validation evaluations")
    eval_batches: int = _f(4, "batches per validation evaluation")
    log_every: int = _f(10, "steps between metric lines")
    checkpoint_every: int = _f(100, "steps between checkpoints")
    resume: bool = _f(False, "continue from the checkpoint in the output folder")
    device: str = _f("auto", "auto, cpu, cuda")
    precision: str = _f("auto", "auto (bf16 autocast on CUDA), fp32, bf16")
    compile: bool = _f(False, "torch.compile the model")
    strategy: str = _f("single", "single, ddp or fsdp (under torchrun)")
    dist_backend: str = _f("auto", "torch.distributed backend: auto (nccl on CUDA, gloo on CPU), gloo, nccl")
    backend: str = _f("auto", "ops backend: auto, torch or triton")
    progress: bool = _f(True, "a bar on a terminal (off, or not a terminal: a plain line every log_every steps)")
    warnings: str = _f("summary", "fast-path fallbacks: summary (one line: which ops and why) or quiet")
    threads: int = _f(0, "torch CPU threads; 0 = OMP_NUM_THREADS if set, else the cores this process may use")
    sample_tokens: int = _f(200, "tokens to generate at the end (LM tasks)")
    stop_after: int = _f(0, "stop (as if killed) after this many steps; 0 = run to the end")


# ---------------------------------------------------------------------------------------------
# Conversion and validation
# ---------------------------------------------------------------------------------------------
def config_to_dict(cfg: Any) -> Any:
    """A plain-container copy of a DictConfig / dataclass / dict / YAML path (resolved)."""
    if isinstance(cfg, (str, Path)) and str(cfg).endswith((".yaml", ".yml")):
        path = Path(cfg)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        cfg = OmegaConf.load(path)
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg


def _field_names(config_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls)]


def validate_config(config_cls: type, data: dict, path: str) -> Any:
    """Merge ``data`` into ``config_cls``'s schema and return a dataclass instance.

    Unknown keys and wrong types raise ``ValueError`` naming the full key path, the expected
    type and the closest valid keys.
    """
    schema = OmegaConf.structured(config_cls)
    try:
        merged = OmegaConf.merge(schema, data)
        obj = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        key = str(e.key) if getattr(e, "key", None) is not None else "?"
        valid = _field_names(config_cls)
        raise ValueError(f"{path}.{key}: unknown key for {config_cls.__name__}{close_matches(key, valid)} "
                         f"(valid keys: {', '.join(valid)})") from None
    except ValidationError as e:
        full = getattr(e, "full_key", None) or getattr(e, "key", "?")
        raise ValueError(f"{path}.{full}: {e.msg}") from None
    except OmegaConfBaseException as e:
        full = getattr(e, "full_key", None) or getattr(e, "key", "?")
        msg = getattr(e, "msg", str(e))
        raise ValueError(f"{path}.{full}: {msg}") from None
    return obj


# ---------------------------------------------------------------------------------------------
# Hydra integration
# ---------------------------------------------------------------------------------------------
def store_schema(kind: str, name: str, config_cls: type) -> None:
    """Store a component's config dataclass in Hydra's ConfigStore.

    ``schema/<kind>/<name>`` is what the shipped YAML presets extend; ``<kind>/<name>`` makes a
    component with no shipped preset (a plugin's) selectable as ``attention=gated``.
    """
    from hydra.core.config_store import ConfigStore

    node = OmegaConf.structured(config_cls)
    node.name = name
    cs = ConfigStore.instance()
    cs.store(group=f"schema/{kind}", name=name, node=node)
    if not _has_preset(kind, name):
        cs.store(group=kind, name=name, node=node)


def _has_preset(kind: str, name: str) -> bool:
    from importlib.resources import files

    return files(CONFIG_MODULE).joinpath(kind, f"{name}.yaml").is_file()


def _store_fixed_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="schema", name="trainer", node=TrainerConfig)


def plugin_overrides(overrides: list[str]) -> list[str]:
    """Module names given by ``plugins=[...]`` / ``+plugins=[...]`` overrides."""
    modules: list[str] = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") != "plugins" or not value:
            continue
        parsed = yaml.safe_load(value if value.startswith("[") else f"[{value}]")
        modules.extend(str(m).strip() for m in parsed or [] if str(m).strip())
    return modules


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The config the ``blockzoo.train`` CLI would use for these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    load_plugins(plugin_overrides(overrides))
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name, overrides=overrides)
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


_store_fixed_schemas()
