"""Block masks: a keep mask compressed to the tiles the block-sparse attention kernels visit.

The (L, S) score matrix is cut into ``block_m x block_n`` tiles. A tile with no kept element is
never visited; a *full* tile (every element kept, inside the bounds) is computed with no mask; a
*partial* tile carries a bitmask of ``block_m`` rows x ``words`` int32 words (bit ``c % 32`` of word
``c // 32`` is column ``c`` of the tile). Causal masking and the L/S boundary are folded into the
bitmasks of the tiles they cut, so full tiles never pay for them.

For each mask group (the mask's own batch x heads; 1 x 1 for a shared mask) the tiles are listed
per query block (forward and dQ) and per key block (dK/dV), full and partial tiles apart, as
CSR-style ``offsets`` / ``blocks`` int32 tensors.

A *band* mask (keep exactly ``lo <= j - i <= hi``, e.g. a sliding window, with causal folded in
as ``hi <= 0``) is built analytically (``block_mask(window=(lo, hi), ...)``, or detected in a
single-group bool mask) and carries ``band = (lo, hi)`` instead of bitmasks: the kernels then
compute a partial tile's keep mask from row and column indices.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from blockzoo.ops.masks import as_4d, document_mask

TILE_CHUNK = 1 << 24  # tile elements packed into bits per step (bounds the temporaries)
DEFAULT_TILE = (128, 64)  # (block_m, block_n) when none is given


@dataclass(eq=False)
class BlockMask:
    """A keep mask over (B_m, H_m, L, S) as tile lists and per-tile bitmasks (see the module doc).

    ``batch`` / ``heads`` are the mask's own leading sizes (1 when shared); ``nnz`` counts kept
    elements over all groups. Build one with :func:`block_mask`. A band mask (``band`` set) has
    no bitmasks (``bits`` is empty; ``part_bits_t`` still names each partial tile's index in the
    per-query-block list).
    """

    batch: int
    heads: int
    q_len: int
    kv_len: int
    block_m: int
    block_n: int
    causal: bool
    full_offsets: torch.Tensor  # (G * NM + 1,) full tiles of each query block
    full_cols: torch.Tensor  # (F,) their key blocks
    part_offsets: torch.Tensor  # (G * NM + 1,) partial tiles of each query block
    part_cols: torch.Tensor  # (P,) their key blocks; bitmask p is bits[p]
    bits: torch.Tensor  # (P, block_m, words) int32
    full_offsets_t: torch.Tensor  # (G * NN + 1,) full tiles of each key block
    full_rows_t: torch.Tensor  # (F,) their query blocks
    part_offsets_t: torch.Tensor  # (G * NN + 1,) partial tiles of each key block
    part_rows_t: torch.Tensor  # (P,) their query blocks
    part_bits_t: torch.Tensor  # (P,) index of their bitmask in ``bits``
    row_order: torch.Tensor  # (G * NM,) query blocks of each group, most tiles first
    full_tiles: int
    partial_tiles: int
    nnz: int
    band: tuple[int, int] | None = None  # keep exactly lo <= j - i <= hi (causal folded in); bits then empty
    doc_ids: torch.Tensor | None = None  # (batch, L) document ids of a packed-document mask (bits as usual)
    doc_band: tuple[int, int] | None = None  # with doc_ids: the window lo <= j - i <= hi (None: none)

    @property
    def groups(self) -> int:
        return self.batch * self.heads

    @property
    def n_row_blocks(self) -> int:
        return -(-self.q_len // self.block_m)

    @property
    def n_col_blocks(self) -> int:
        return -(-self.kv_len // self.block_n)

    @property
    def words(self) -> int:
        return max(1, self.block_n // 32)

    @property
    def device(self) -> torch.device:
        return self.bits.device

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.groups * self.q_len * self.kv_len)

    def group_strides(self, batch: int, heads: int) -> tuple[int, int]:
        """(stride over batch, stride over heads) giving a (b, h) pair's mask group."""
        if self.batch not in (1, batch) or self.heads not in (1, heads):
            raise ValueError(f"block mask for (batch={self.batch}, heads={self.heads}) does not broadcast to "
                             f"(batch={batch}, heads={heads})")
        return (self.heads if self.batch > 1 else 0), (1 if self.heads > 1 else 0)

    def to_dense(self) -> torch.Tensor:
        """The (B_m, H_m, L, S) bool keep mask this block mask encodes (for checks and dense fallbacks)."""
        if self.band is not None:
            return band_dense(self.q_len, self.kv_len, *self.band, device=self.device)[None, None]
        if self.doc_ids is not None:
            return document_mask(self.doc_ids, causal=self.causal, window=self.doc_band)
        g, nm, nn = self.groups, self.n_row_blocks, self.n_col_blocks
        bm, bn = self.block_m, self.block_n
        tiles = torch.zeros(g, nm, nn, bm, bn, dtype=torch.bool, device=self.device)
        grp_rows = torch.arange(g * nm, device=self.device)
        full_rows = torch.repeat_interleave(grp_rows, torch.diff(self.full_offsets.long()))
        tiles[full_rows // nm, full_rows % nm, self.full_cols.long()] = True
        part_rows = torch.repeat_interleave(grp_rows, torch.diff(self.part_offsets.long()))
        tiles[part_rows // nm, part_rows % nm, self.part_cols.long()] = unpack_bits(self.bits, bn)
        dense = tiles.permute(0, 1, 3, 2, 4).reshape(g, nm * bm, nn * bn)[:, :self.q_len, :self.kv_len]
        return dense.reshape(self.batch, self.heads, self.q_len, self.kv_len)


def pack_bits(tiles: torch.Tensor) -> torch.Tensor:
    """(P, BM, BN) bool -> (P, BM, max(1, BN // 32)) int32 words, bit c % 32 of word c // 32 = column c."""
    p, bm, bn = tiles.shape
    per_word = min(bn, 32)
    weights = torch.tensor([1 << b for b in range(per_word)], dtype=torch.int64, device=tiles.device)
    if per_word == 32:
        weights[31] = -(1 << 31)  # two's complement: the sum stays inside int32
    weights = weights.to(torch.int32)
    out = torch.empty(p, bm, bn // per_word, dtype=torch.int32, device=tiles.device)
    step = max(1, TILE_CHUNK // (bm * bn))
    for s in range(0, p, step):
        t = tiles[s:s + step].reshape(-1, bm, bn // per_word, per_word).to(torch.int32)
        out[s:s + step] = (t * weights).sum(-1, dtype=torch.int32)
    return out


def unpack_bits(bits: torch.Tensor, block_n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (P, BM, W) int32 -> (P, BM, block_n) bool."""
    per_word = min(block_n, 32)
    shifts = torch.arange(per_word, dtype=torch.int32, device=bits.device)
    b = (bits[..., None] >> shifts) & 1
    return b.reshape(bits.shape[0], bits.shape[1], block_n).bool()


def _as_groups(mask: torch.Tensor, q_len: int, kv_len: int) -> torch.Tensor:
    """A bool mask broadcastable to (B, H, L, S) as (B_m, H_m, L, S) with L and S materialized."""
    if mask.dim() < 2 or mask.dim() > 4:
        raise ValueError(f"mask must have 2 to 4 dims (..., L, S), got shape {tuple(mask.shape)}")
    m = as_4d(mask)
    if m.shape[2] not in (1, q_len) or m.shape[3] not in (1, kv_len):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to (L={q_len}, S={kv_len})")
    return m.expand(m.shape[0], m.shape[1], q_len, kv_len)


def block_mask(mask: torch.Tensor | None = None, *, q_len: int | None = None, kv_len: int | None = None,
               causal: bool = False, block_size: int | tuple[int, int] = DEFAULT_TILE,
               layout: torch.Tensor | None = None, layout_block: int | None = None,
               window: tuple[int, int] | None = None, device: torch.device | str | None = None,
               detect_band: bool = True) -> BlockMask:
    """Build a :class:`BlockMask` for the block-sparse attention kernels.

    Give one of ``mask`` (bool keep mask broadcastable to (B, H, L, S); L and S taken from it
    unless broadcast), ``layout`` (bool (…, L / layout_block, S / layout_block): a kept block
    keeps its whole ``layout_block`` x ``layout_block`` square) with ``q_len`` / ``kv_len``, or
    ``window=(lo, hi)`` with ``q_len`` / ``kv_len`` (and ``device``, default CPU): query i keeps
    key j when lo <= j - i <= hi (a sliding window of w keys either side is (-w, w); a causal one
    of w keys including the diagonal is (-(w - 1), 0)), built without a dense mask.
    ``causal`` additionally keeps only j <= i. ``block_size`` = (block_m, block_n), the kernels'
    tile (one int: square): powers of two, block_m >= 16, block_n >= 16. A shared (one group) ``mask`` that is
    exactly such a band (causal applied) gives the same band block mask, unless ``detect_band``
    is False.
    """
    if isinstance(block_size, int):
        block_size = (block_size, block_size)
    if not (isinstance(block_size, tuple | list) and len(block_size) == 2
            and all(isinstance(b, int) for b in block_size)):
        raise TypeError(f"block_size must be an int or a (block_m, block_n) pair of ints, got {block_size!r}")
    bm, bn = block_size
    for name, b in (("block_m", bm), ("block_n", bn)):
        if b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {b}")
    if sum(x is not None for x in (mask, layout, window)) != 1:
        raise ValueError("give exactly one of mask, layout and window")
    if window is not None:
        if q_len is None or kv_len is None:
            raise ValueError("a window needs q_len and kv_len")
        lo, hi = (int(x) for x in window)
        return _build_band(int(q_len), int(kv_len), lo, hi, bm, bn, causal, torch.device(device or "cpu"))
    if layout is not None:
        mask = _expand_layout(layout, layout_block, q_len, kv_len)
    assert mask is not None
    if mask.dtype != torch.bool:
        raise TypeError(f"block_mask needs a bool keep mask, got {mask.dtype}")
    q_len = mask.shape[-2] if q_len is None else q_len
    kv_len = mask.shape[-1] if kv_len is None else kv_len
    m4 = _as_groups(mask, q_len, kv_len)
    if detect_band and m4.shape[0] * m4.shape[1] == 1 and q_len > 0 and kv_len > 0:
        band = _band_of(torch.tril(m4[0, 0]) if causal else m4[0, 0])
        if band is not None:
            return _build_band(q_len, kv_len, band[0], band[1], bm, bn, causal, mask.device)
    return _build(m4, q_len, kv_len, bm, bn, causal)


def band_row_counts(q_len: int, kv_len: int, lo: int | torch.Tensor, hi: int | torch.Tensor,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Kept keys of each query row i of the band lo <= j - i <= hi over (q_len, kv_len): int64 (q_len,)."""
    i = torch.arange(q_len, dtype=torch.int64, device=device)
    return ((i + hi).clamp_max(kv_len - 1) - (i + lo).clamp_min(0) + 1).clamp_min(0)


def band_dense(q_len: int, kv_len: int, lo: int, hi: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(L, S) bool: True where lo <= j - i <= hi."""
    d = torch.arange(kv_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
    return (d >= lo) & (d <= hi)


def _band_of(m: torch.Tensor) -> tuple[int, int] | None:
    """(lo, hi) when the (L, S) bool mask keeps exactly lo <= j - i <= hi and something; else None (one sync)."""
    L, S = m.shape
    u = m.view(torch.uint8)
    count = u.sum(1, dtype=torch.int64)
    first = u.argmax(1)  # first kept column of each row (0 for an empty row)
    last = S - 1 - u.flip(1).argmax(1)
    i = torch.arange(L, device=m.device)
    live = count > 0
    lo = torch.where(live, first - i, S).min()
    hi = torch.where(live, last - i, -L).max()
    # every kept j lies in its row's band [max(0, i + lo), min(S - 1, i + hi)], so the mask is that
    # band exactly when each row keeps as many elements as its band row has
    ok = (count == band_row_counts(L, S, lo, hi, m.device)).all() & live.any()
    ok_, lo_, hi_ = torch.stack([ok.to(torch.int64), lo, hi]).tolist()
    return (int(lo_), int(hi_)) if ok_ else None


def _build_band(L: int, S: int, lo: int, hi: int, bm: int, bn: int, causal: bool, dev: torch.device) -> BlockMask:
    """The block mask of lo <= j - i <= hi (and j <= i when causal) over (L, S), from the tile grid alone."""
    if causal:
        hi = min(hi, 0)
    lo, hi = max(lo, -L), min(hi, S)  # the same keep set, and small enough for int32 in the kernels
    NM, NN = -(-L // bm), -(-S // bn)
    r0 = torch.arange(NM, dtype=torch.int64) * bm
    c0 = torch.arange(NN, dtype=torch.int64) * bn
    r1 = (r0 + bm).clamp_max(L) - 1  # last row / column of each block inside the bounds
    c1 = (c0 + bn).clamp_max(S) - 1
    dmin = c0[None, :] - r1[:, None]  # the smallest and largest j - i of each tile
    dmax = c1[None, :] - r0[:, None]
    inside = ((r0 + bm) <= L)[:, None] & ((c0 + bn) <= S)[None, :]
    full = inside & (dmin >= lo) & (dmax <= hi)
    part = (dmin.clamp_min(lo) <= dmax.clamp_max(hi)) & ~full
    nnz = int(band_row_counts(L, S, lo, hi).sum())
    bits = torch.zeros(0, bm, max(1, bn // 32), dtype=torch.int32)
    return _assemble(full[None], part[None], int(part.sum()), bits, 1, 1, L, S, bm, bn, causal, nnz, dev, (lo, hi))


def _expand_layout(layout: torch.Tensor, block: int | None, q_len: int | None, kv_len: int | None) -> torch.Tensor:
    if block is None or q_len is None or kv_len is None:
        raise ValueError("a layout needs layout_block, q_len and kv_len")
    if isinstance(block, bool) or not isinstance(block, int):
        raise TypeError(f"layout_block must be a positive int (the side of a layout block), got {block!r}")
    if block < 1:
        raise ValueError(f"layout_block must be a positive int (the side of a layout block), got {block}")
    if layout.dtype != torch.bool or layout.dim() < 2:
        raise TypeError(f"layout must be a bool (..., L/b, S/b) tensor, got {layout.dtype} {tuple(layout.shape)}")
    need = (-(-q_len // block), -(-kv_len // block))
    if tuple(layout.shape[-2:]) != need:
        raise ValueError(f"layout of shape {tuple(layout.shape)} must end in {need} for L={q_len}, S={kv_len}, "
                         f"block {block}")
    full = layout.repeat_interleave(block, -2).repeat_interleave(block, -1)
    return full[..., :q_len, :kv_len]


def _build(m4: torch.Tensor, L: int, S: int, bm: int, bn: int, causal: bool) -> BlockMask:
    B, H = m4.shape[:2]
    G, NM, NN = B * H, -(-L // bm), -(-S // bn)
    dev = m4.device
    padded = torch.zeros(G, NM * bm, NN * bn, dtype=torch.bool, device=dev)  # zeros past L and S
    padded[:, :L, :S] = m4.reshape(G, L, S)
    if causal:
        padded.tril_()
    tiles = padded.view(G, NM, bm, NN, bn).permute(0, 1, 3, 2, 4)  # (G, NM, NN, bm, bn)
    counts = tiles.sum((3, 4), dtype=torch.int32)
    full = counts == bm * bn
    part = (counts > 0) & ~full
    pidx = part.nonzero()
    bits = pack_bits(tiles[pidx[:, 0], pidx[:, 1], pidx[:, 2]])
    return _assemble(full, part, pidx.shape[0], bits, B, H, L, S, bm, bn, causal, counts.sum(dtype=torch.int64), dev)


def _assemble(full: torch.Tensor, part: torch.Tensor, n_part: int, bits: torch.Tensor, B: int, H: int, L: int,
              S: int, bm: int, bn: int, causal: bool, nnz: torch.Tensor | int, dev: torch.device,
              band: tuple[int, int] | None = None, doc_ids: torch.Tensor | None = None,
              doc_band: tuple[int, int] | None = None) -> BlockMask:
    """The BlockMask of (G, NM, NN) full / partial tile grids (``n_part`` partial tiles) and the partial
    tiles' bitmasks in row-major tile order (none for a band); ``doc_ids`` / ``doc_band`` as in BlockMask."""
    full, part, bits = full.to(dev), part.to(dev), bits.to(dev)
    bit_id = torch.full(part.shape, -1, dtype=torch.int32, device=dev)
    bit_id[part] = torch.arange(n_part, dtype=torch.int32, device=dev)
    full_off, full_cols = _lists(full)
    part_off, part_cols = _lists(part)
    full_off_t, full_rows_t = _lists(full.transpose(1, 2))
    part_off_t, part_rows_t = _lists(part.transpose(1, 2))
    part_bits_t = bit_id.transpose(1, 2)[part.transpose(1, 2)]
    per_row = (full | part).sum(-1)
    order = torch.argsort(per_row, dim=1, descending=True, stable=True).to(torch.int32).flatten()
    stats = torch.stack([full.sum(), part.sum(), torch.as_tensor(nnz, device=dev).to(torch.int64)]).tolist()
    return BlockMask(B, H, L, S, bm, bn, causal, full_off, full_cols, part_off, part_cols, bits,
                     full_off_t, full_rows_t, part_off_t, part_rows_t, part_bits_t.contiguous(), order,
                     int(stats[0]), int(stats[1]), int(stats[2]), band, doc_ids, doc_band)


def _lists(kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, R, C) bool -> (offsets (G*R + 1,), column index of each kept entry in row-major order), int32."""
    per_row = kept.sum(-1, dtype=torch.int32).flatten()
    offsets = torch.zeros(per_row.numel() + 1, dtype=torch.int32, device=kept.device)
    offsets[1:] = per_row.cumsum(0)
    cols = kept.nonzero()[:, 2].to(torch.int32)
    return offsets, cols
