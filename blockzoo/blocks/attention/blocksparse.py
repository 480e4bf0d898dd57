"""Block-sparse attention (Child et al., 2019, "Generating Long Sequences with Sparse Transformers")."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from blockzoo.blocks.attention import layouts
from blockzoo.blocks.attention.pattern import PatternAttention
from blockzoo.config import NON_NEGATIVE, AttentionConfig, one_of
from blockzoo.registry import register_attention

LAYOUTS = ("fixed", "variable", "bigbird", "longformer", "local", "dense", "custom")


@dataclass
class BlockSparseConfig(AttentionConfig):
    """Config of block-sparse attention; each layout reads the fields named in its help."""

    block_size: int = field(default=16, metadata={"help": "tokens per block (rows and columns)"})
    layout: str = field(default="fixed", metadata={
        "help": "fixed, variable, bigbird, longformer, local, dense; custom = a tensor given to the constructor",
        "check": one_of(*LAYOUTS)})
    local_blocks: int = field(default=4, metadata={"help": "fixed: blocks per chunk"})
    num_summary_blocks: int = field(default=1, metadata={"help": "fixed: summary blocks per chunk"})
    different_per_head: bool = field(default=False, metadata={"help": "fixed: shift summary blocks per head"})
    direction: str = field(default="bidirectional", metadata={
        "help": "fixed: bidirectional, or unidirectional (block column <= block row; xFormers' attention)",
        "check": one_of(*layouts.DIRECTIONS)})
    horizontal_global: bool = field(default=False, metadata={
        "help": "fixed: summary blocks also see every column (bidirectional only)"})
    num_global_patterns: int = field(default=0, metadata={
        "help": "fixed: distinct summary shifts over the heads (0: local_blocks // num_summary_blocks; "
                ">1 needs different_per_head)", "check": NON_NEGATIVE})
    window_blocks: list[int] = field(default_factory=lambda: [4], metadata={
        "help": "variable: sizes of consecutive local windows (the last repeats)"})
    num_window_blocks: int = field(default=3, metadata={"help": "bigbird, longformer, local: window width"})
    global_block_indices: list[int] = field(default_factory=lambda: [0], metadata={
        "help": "variable, bigbird, longformer: global blocks"})
    num_random_blocks: int = field(default=1, metadata={"help": "variable, bigbird: random blocks per row"})
    seed: int = field(default=0, metadata={"help": "variable, bigbird: seed of the random blocks"})


def layout_from_config(cfg: BlockSparseConfig) -> torch.Tensor:
    """The block layout the config names, sized for ``max_seq_len`` tokens."""
    if cfg.max_seq_len < 1:
        raise ValueError(f"attention.max_seq_len must be >= 1 to size the '{cfg.layout}' layout "
                         f"(set by the model), got {cfg.max_seq_len}")
    nb = -(-cfg.max_seq_len // cfg.block_size)
    heads = max(cfg.num_heads, 1)
    if cfg.layout == "fixed":
        return layouts.fixed(nb, nb, cfg.local_blocks, cfg.num_summary_blocks, heads, cfg.different_per_head,
                             cfg.direction, cfg.horizontal_global, cfg.num_global_patterns)
    if cfg.layout == "variable":
        return layouts.variable(nb, nb, cfg.window_blocks, cfg.global_block_indices, cfg.num_random_blocks,
                                heads, cfg.seed)
    if cfg.layout == "bigbird":
        return layouts.bigbird(nb, nb, cfg.num_window_blocks, cfg.global_block_indices, cfg.num_random_blocks,
                               heads, cfg.seed)
    if cfg.layout == "longformer":
        return layouts.longformer(nb, nb, cfg.num_window_blocks, cfg.global_block_indices)
    if cfg.layout == "dense":
        return layouts.dense(nb, nb)
    return layouts.local(nb, nb, cfg.num_window_blocks)


@register_attention("blocksparse", BlockSparseConfig)
class BlockSparseAttention(PatternAttention):
    """Softmax attention over the kept blocks of a block layout (heads or 1, nb_rows, nb_cols).

    The layout is built from the config by a helper of ``blockzoo.blocks.attention.layouts``
    (sized for ``max_seq_len``) or given as a bool tensor with ``layout='custom'``:
    ``BlockSparseAttention(cfg, layout=t)``. Any L and S up to the layout's extent work: the
    element mask is the layout expanded to tokens and cropped, built once per (L, S, device) and
    run through ``blockzoo.ops.masked_attention`` with the caller's element mask, causal flag
    and key padding. The layout is a buffer in the module's ``state_dict``: a model saved with a
    random layout (bigbird, variable) reloads with that layout whatever the seed it is rebuilt with.
    """

    supports_documents = False  # the pattern is tied to absolute positions: packing would change it

    layout: torch.Tensor

    def __init__(self, cfg: BlockSparseConfig, layout: torch.Tensor | None = None):
        super().__init__(cfg)
        if cfg.layout not in LAYOUTS:
            raise ValueError(f"attention.layout must be one of {', '.join(LAYOUTS)}, got {cfg.layout!r}")
        if cfg.block_size < 1:
            raise ValueError(f"attention.block_size must be >= 1, got {cfg.block_size}")
        if (layout is not None) != (cfg.layout == "custom"):
            raise ValueError("pass a layout tensor exactly when attention.layout='custom' "
                             f"(layout={cfg.layout!r}, tensor given: {layout is not None})")
        if layout is None:
            layout = layout_from_config(cfg)
        if layout.dim() == 2:
            layout = layout[None]
        if layout.dtype != torch.bool or layout.dim() != 3:
            raise ValueError(f"a block layout is a bool (heads, nb_rows, nb_cols) tensor, got {layout.dtype} "
                             f"of shape {tuple(layout.shape)}")
        if cfg.num_heads and layout.shape[0] not in (1, cfg.num_heads):
            raise ValueError(f"layout has {layout.shape[0]} heads; expected 1 or num_heads={cfg.num_heads}")
        self.register_buffer("layout", layout.clone())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A saved ``layout`` replaces the built one (bool, or integer with nonzero = kept, as xFormers saved
        them); a shape other than this module's raises ValueError naming the buffer. A state dict without
        one (saved before layouts were part of the state) keeps the built layout."""
        key = prefix + "layout"
        saved = state_dict.get(key)
        if saved is not None:
            if saved.dtype.is_floating_point or saved.dtype.is_complex:
                raise ValueError(f"{key}: a block layout is bool (or integer, nonzero = kept), got {saved.dtype}")
            if tuple(saved.shape) != tuple(self.layout.shape):
                raise ValueError(f"{key}: the saved block layout has shape {tuple(saved.shape)} but this module's is "
                                 f"{tuple(self.layout.shape)} (heads, block rows, block columns); build it with the "
                                 "same num_heads, max_seq_len, block_size and layout")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if saved is None and key in missing_keys:
            missing_keys.remove(key)
        self._pattern_cache.clear()  # patterns expanded from the layout it replaced

    def build_pattern(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        return layouts.expand_layout(self.layout.to(device), self.cfg.block_size, rows, cols)
