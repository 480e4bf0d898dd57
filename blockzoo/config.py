"""Dataclass configs, their validation (types, keys and values) and Hydra ConfigStore registration.

Every component owns a dataclass config deriving from one of the base classes below. The
same dataclass is stored in Hydra's ConfigStore (``schema/<kind>/<name>``), and the shipped
YAML presets in ``blockzoo/configs/<kind>/`` extend it, so command-line overrides are typed.
A field's ``metadata["check"]`` (a :class:`Check`) constrains its value; ``validate_config``
applies it, and a config class's ``cross_check`` method the constraints between fields.
``blockzoo.composition.compose`` composes the app's config as the CLI does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from blockzoo.ops.backend import BACKENDS
from blockzoo.ops.torch_ref import ACTIVATIONS
from blockzoo.suggest import close_matches

CONFIG_MODULE = "blockzoo.configs"
RESIDUALS = ("pre", "post", "deepnorm")
QKV_LAYOUTS = ("fused", "separate")
INIT_SCHEMES = ("default", "small", "vit", "timm", "moco", "deepnorm")
PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("single", "ddp", "fsdp")
DIST_BACKENDS = ("auto", "gloo", "nccl")
QK_NORMS = ("none", "rms", "layer")  # attention.qk_norm
DEVICES = ("auto", "cpu", "cuda")
WARNING_MODES = ("summary", "quiet")  # trainer.warnings: fast-path fallbacks as one line, or not at all


class ConfigError(ValueError):
    """A config that cannot be composed or built; the message names the key path and the closest valid names."""


# ---------------------------------------------------------------------------------------------
# Value constraints
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """A constraint on one config value: ``test(value)`` holds for valid values; ``expected`` says which."""

    test: Callable[[Any], bool]
    expected: str
    choices: tuple[str, ...] = ()  # for the 'did you mean' of a choice-valued field

    def problem(self, path: str, value: Any) -> str | None:
        """None for a valid value, else the error message for ``path=value``."""
        if self.test(value):
            return None
        hint = close_matches(value, list(self.choices)) if isinstance(value, str) else ""
        return f"{path}={value!r}: expected {self.expected}{hint}"


def one_of(*choices: str) -> Check:
    """A choice-valued field: one of ``choices`` (the error suggests the closest)."""
    return Check(lambda v: v in choices, "one of " + ", ".join(choices), choices)


def optional(check: Check) -> Check:
    """``check``, or None."""
    return Check(lambda v: v is None or check.test(v), f"None or {check.expected}")


AT_LEAST_1 = Check(lambda v: v >= 1, ">= 1")
NON_NEGATIVE = Check(lambda v: v >= 0, ">= 0")
POSITIVE = Check(lambda v: v > 0, "> 0")
PROBABILITY = Check(lambda v: 0 <= v < 1, "a probability in [0, 1)")
FRACTION = Check(lambda v: 0 <= v <= 1, "in [0, 1]")


# ---------------------------------------------------------------------------------------------
# Base configs. Fields documented with metadata["help"] show up in blockzoo.describe().
# Fields marked "set by the model" are filled in by the model builder when left at 0.
# ---------------------------------------------------------------------------------------------
def _f(default: Any, help: str, check: Check | None = None) -> Any:
    metadata = {"help": help, "check": check} if check else {"help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class AttentionConfig:
    """Base config of an attention mechanism (what runs between the q/k/v projections)."""

    name: str = MISSING
    dropout: float = _f(0.0, "dropout on attention probabilities", PROBABILITY)
    num_heads: int = _f(0, "set by the model")
    head_dim: int = _f(0, "set by the model")
    max_seq_len: int = _f(0, "set by the model")
    # The knobs of current softmax attention (a mechanism without explicit softmax scores refuses
    # softcap and sinks; qk_norm is applied by the multi-head wrapper, before rotary).
    qk_norm: str = _f("none", "normalize q and k over the head dim (none, rms, layer), learnable per-head scale",
                      one_of(*QK_NORMS))
    qk_norm_eps: float = _f(1e-6, "epsilon of qk_norm", POSITIVE)
    softcap: Optional[float] = _f(None, "cap the logits: c * tanh(logits / c) before the mask (None = off)",
                                  optional(POSITIVE))
    sinks: bool = _f(False, "a learnable logit per head that joins the softmax denominator (no value)")


@dataclass
class FeedforwardConfig:
    """Base config of a position-wise feedforward."""

    name: str = MISSING
    dim_model: int = _f(0, "set by the model")
    hidden_mult: float = _f(4.0, "hidden width as a multiple of dim_model (if hidden_dim is unset)", POSITIVE)
    hidden_dim: Optional[int] = _f(None, "explicit hidden width (None or 0: from hidden_mult)", optional(NON_NEGATIVE))
    activation: str = _f("gelu", "relu, gelu, gelu_tanh, silu, squared_relu, leaky_relu, star_relu, smelu",
                         one_of(*ACTIVATIONS))
    dropout: float = _f(0.0, "dropout after the activation", PROBABILITY)
    bias: bool = _f(True, "bias in the linear layers")

    def hidden(self) -> int:
        return int(self.hidden_dim) if self.hidden_dim else int(round(self.hidden_mult * self.dim_model))


@dataclass
class NormConfig:
    """Base config of a normalization layer."""

    name: str = MISSING
    dim: int = _f(0, "set by the model")
    eps: float = _f(1e-5, "numerical epsilon", NON_NEGATIVE)
    affine: bool = _f(True, "learn a scale (and bias where the norm has one)")


@dataclass
class EmbeddingConfig:
    """Base config of a token/position embedding."""

    name: str = MISSING
    vocab_size: int = _f(0, "set by the model")
    dim_model: int = _f(0, "set by the model")
    max_seq_len: int = _f(0, "set by the model")
    dropout: float = _f(0.0, "dropout after the embedding", PROBABILITY)


@dataclass
class BlockConfig:
    """Base config of a transformer block (attention + feedforward + norms + residuals)."""

    name: str = MISSING
    dim_model: int = _f(0, "set by the model")
    num_heads: int = _f(0, "set by the model")
    num_kv_heads: Optional[int] = _f(None, "grouped-query heads (None = num_heads, 1 = multi-query)")
    residual: str = _f("pre", "pre, post or deepnorm", one_of(*RESIDUALS))
    dropout: float = _f(0.0, "residual dropout", PROBABILITY)
    qkv: str = _f("fused", "fused or separate q/k/v projections", one_of(*QKV_LAYOUTS))
    bias: bool = _f(True, "bias in projections")
    rotary: bool = _f(False, "apply rotary position embedding to q and k")
    rotary_base: float = _f(10000.0, "rotary frequency base")
    rotary_options: Any = _f(None, "set by the model: the rotary embedding's fraction and scaling settings")
    dim_key: Optional[int] = _f(None, "total width of the q/k projections (None = dim_model)")
    dim_value: Optional[int] = _f(None, "total width of the v projection (None = dim_model)")
    projections: str = _f("in_out", "self-attention projections: in_out, out (inputs split into heads unprojected) "
                          "or none (a token mixer)", one_of("in_out", "out", "none"))
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
    dim_model: int = _f(256, "model width", AT_LEAST_1)
    num_layers: int = _f(4, "number of blocks (encoder blocks for encoder_decoder)", AT_LEAST_1)
    num_heads: int = _f(4, "attention heads", AT_LEAST_1)
    num_kv_heads: Optional[int] = _f(None, "grouped-query heads (None = num_heads, 1 = multi-query)",
                                     optional(AT_LEAST_1))
    vocab_size: int = _f(256, "vocabulary size (set from the task when 0)", NON_NEGATIVE)
    max_seq_len: int = _f(256, "longest sequence the model accepts", AT_LEAST_1)
    residual: str = _f("pre", "pre, post or deepnorm", one_of(*RESIDUALS))
    dropout: float = _f(0.0, "residual and embedding dropout", PROBABILITY)
    qkv: str = _f("fused", "fused or separate q/k/v projections", one_of(*QKV_LAYOUTS))
    bias: bool = _f(True, "bias in linear layers")
    tie_embeddings: bool = _f(True, "share the token embedding with the output head")
    init: str = _f("default", "weight init: default, small, vit, timm, moco, deepnorm", one_of(*INIT_SCHEMES))
    attention: Any = None
    feedforward: Any = None
    norm: Any = None
    embedding: Any = None
    attention_pattern: Any = _f(None, "per-layer attention / feedforward, repeated over the layers: a list of "
                                      "attention names, or of {attention: ..., feedforward: ...} entries "
                                      "(null: every layer the same)")

    def cross_check(self, path: str) -> None:
        """The heads divide the width, and the key/value heads divide the heads."""
        if self.dim_model % self.num_heads:
            raise ConfigError(f"{path}.num_heads={self.num_heads} must divide {path}.dim_model={self.dim_model}")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{path}.num_kv_heads={self.num_kv_heads} must divide "
                              f"{path}.num_heads={self.num_heads}")


@dataclass
class TaskConfig:
    """Base config of a training task (a deterministic batch generator)."""

    name: str = MISSING
    seq_len: int = _f(128, "sequence length of a batch")
    seed: int = _f(0, "data seed (split and sampling)")


@dataclass
class TrainerConfig:
    """Training loop settings."""

    steps: int = _f(300, "optimizer steps", AT_LEAST_1)
    batch_size: int = _f(16, "global batch size (sequences per step)", AT_LEAST_1)
    lr: float = _f(3e-3, "peak learning rate", POSITIVE)
    min_lr_ratio: float = _f(0.1, "final lr as a fraction of the peak (cosine decay)", FRACTION)
    warmup_steps: int = _f(30, "linear warm-up steps", NON_NEGATIVE)
    weight_decay: float = _f(0.1, "AdamW weight decay", NON_NEGATIVE)
    betas: list = _f([0.9, 0.95], "AdamW betas")
    grad_clip: float = _f(1.0, "max global grad norm (0 disables)", NON_NEGATIVE)
    eval_every: int = _f(100, "steps between validation evaluations (0: only at the end)", NON_NEGATIVE)
    eval_batches: int = _f(4, "batches per validation evaluation", AT_LEAST_1)
    log_every: int = _f(10, "steps between metric lines", AT_LEAST_1)
    checkpoint_every: int = _f(100, "steps between checkpoints (0: only at the end)", NON_NEGATIVE)
    resume: bool = _f(False, "continue from the checkpoint in the output folder or, when it has none, from the "
                             "newest run of the same config under the outputs root")
    resume_allow_model_change: bool = _f(False, "resume even though the model config differs from the "
                                                 "checkpoint's")
    device: str = _f("auto", "auto, cpu, cuda", one_of(*DEVICES))
    precision: str = _f("auto", "auto (bf16 autocast on CUDA), fp32, bf16", one_of(*PRECISIONS))
    compile: bool = _f(False, "torch.compile the model")
    strategy: str = _f("single", "single, ddp or fsdp (under torchrun)", one_of(*STRATEGIES))
    dist_backend: str = _f("auto", "torch.distributed backend: auto (nccl on CUDA, gloo on CPU), gloo, nccl",
                           one_of(*DIST_BACKENDS))
    backend: str = _f("auto", "ops backend: auto, torch or triton", one_of(*BACKENDS))
    progress: bool = _f(True, "a bar on a terminal (off, or not a terminal: a plain line every log_every steps)")
    warnings: str = _f("summary", "fast-path fallbacks: summary (one line: which ops and why) or quiet",
                       one_of(*WARNING_MODES))
    threads: int = _f(0, "torch CPU threads; 0 = OMP_NUM_THREADS if set, else the cores this process may use",
                      NON_NEGATIVE)
    sample_tokens: int = _f(200, "tokens to generate at the end (LM tasks)", NON_NEGATIVE)
    stop_after: int = _f(0, "stop (as if killed) after this many steps; 0 = run to the end", NON_NEGATIVE)
    profile_step: int = _f(0, "profile this step (1-based) and write profile.json: step time, communication "
                              "share, heaviest kernels; 0 = none", NON_NEGATIVE)


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
    """Merge ``data`` into ``config_cls``'s schema and return a dataclass instance with checked values.

    Unknown keys, wrong types and values outside a field's :class:`Check` raise :class:`ConfigError`
    naming the full key path, what is expected and the closest valid keys or choices.
    """
    schema = OmegaConf.structured(config_cls)
    try:
        merged = OmegaConf.merge(schema, data)
        obj = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        key = str(e.key) if getattr(e, "key", None) is not None else "?"
        valid = _field_names(config_cls)
        raise ConfigError(f"{path}.{key}: unknown key for {config_cls.__name__}{close_matches(key, valid)} "
                          f"(valid keys: {', '.join(valid)})") from None
    except ValidationError as e:
        full = getattr(e, "full_key", None) or getattr(e, "key", "?")
        raise ConfigError(f"{path}.{full}: {e.msg}") from None
    except OmegaConfBaseException as e:
        full = getattr(e, "full_key", None) or getattr(e, "key", "?")
        msg = getattr(e, "msg", str(e))
        raise ConfigError(f"{path}.{full}: {msg}") from None
    check_values(obj, path)
    return obj


def check_values(obj: Any, path: str) -> None:
    """Apply each field's ``metadata["check"]``, then the config's own ``cross_check``; raise ConfigError."""
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        problem = check.problem(f"{path}.{f.name}", getattr(obj, f.name)) if check else None
        if problem:
            raise ConfigError(problem)
    cross_check = getattr(obj, "cross_check", None)
    if callable(cross_check):
        cross_check(path)


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


_store_fixed_schemas()
