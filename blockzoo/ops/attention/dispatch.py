"""``masked_attention``: scaled dot-product attention that picks its own path for the mask.

Paths (see ``plan`` and ``cost`` for how one is chosen):
- ``flash``: no mask (causal and key padding aside) -> SDPA's fused kernels, no copies;
- ``block_sparse``: Triton kernel over the tiles that hold a kept element (full tiles unmasked,
  partial tiles through a per-tile bitmask);
- ``csr``: kept (query, key) pairs only: a Triton gather kernel on the GPU, the sparse ops
  (sddmm -> sparse_softmax -> spmm) on the CPU;
- ``dense``: masked SDPA, for masks too dense to gain.
Fully masked rows give zeros on every path. ``path=`` or ``BLOCKZOO_ATTENTION_PATH`` forces one.
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F

from blockzoo.ops import autocast, backend, masks, torch_ref
from blockzoo.ops.attention import analysis, cost, knobs
from blockzoo.ops.attention.analysis import MaskStats, outside_graphs
from blockzoo.ops.attention.plan import AttentionPlan, make_plan
from blockzoo.ops.block_mask import BlockMask
from blockzoo.ops.checks import FLOATS, check_broadcastable, check_mask_dtype, check_tensor
from blockzoo.ops.sparse import ops as sparse_ops
from blockzoo.ops.sparse.csr_mask import CsrMask
from blockzoo.ops.sparse.layout import SparseLayout

PATHS = cost.PATHS
PATH_ENV = "BLOCKZOO_ATTENTION_PATH"
_OP = "masked_attention"
_ALL_KEEP: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q (B, H, L, D); k, v (B, H_kv, S, D) with H divisible by H_kv; one dtype and device."""
    if isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor):
        qs, ks = q.shape, k.shape
        if (len(qs) == 4 and len(ks) == 4 and ks == v.shape and qs[0] == ks[0] and qs[3] == ks[3] and ks[1]
                and qs[1] % ks[1] == 0 and q.dtype == k.dtype == v.dtype and q.dtype in FLOATS
                and q.device == k.device == v.device):
            return  # the common, valid case in one test; otherwise find what is wrong below
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dtypes=FLOATS, dim=4)
    if k.shape != v.shape[:3] + (k.shape[3],) or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree on (B, H_kv, S)")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q batch {q.shape[0]} != k batch {k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q head dim {q.shape[3]} != k head dim {k.shape[3]}")
    if (q.shape[1] % k.shape[1]) if k.shape[1] else q.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads, not a multiple of k/v's {k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")


def _check_ranks(q: Any, k: Any, v: Any) -> None:
    """q, k and v are tensors of at least 2 dims, (..., L, E) as SDPA takes them."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dtypes=FLOATS, min_dim=2)


def _leading(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, ...]:
    """The broadcast leading dims of q, k and v (all but the last two), as SDPA broadcasts them."""
    try:
        return tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    except RuntimeError:
        raise ValueError(f"the leading dims of q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} "
                         "do not broadcast") from None


def _as_4d(t: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    """``t`` (..., X, Y) broadcast to ``lead`` and viewed as (B, H, X, Y): the last leading dim is H, the
    others fold into B (none: 1)."""
    t = t.expand(*lead, *t.shape[-2:])
    if len(lead) > 2:
        return t.reshape(math.prod(lead[:-1]), lead[-1], *t.shape[-2:])
    return t.reshape((1,) * (2 - len(lead)) + tuple(t.shape))


def _mask_as_4d(mask: Any, lead: tuple[int, ...]) -> Any:
    """A tensor mask (..., L, S) for inputs whose leading dims ``lead`` are viewed by :func:`_as_4d`."""
    if not isinstance(mask, torch.Tensor) or mask.dim() < 2:
        return mask  # checked later, on the 4-D inputs
    if mask.dim() > len(lead) + 2:
        raise ValueError(f"mask of shape {tuple(mask.shape)} has more dims than the scores {(*lead, 'L', 'S')}")
    if mask.dim() <= 3 or len(lead) <= 2:
        return mask  # its dims already line up with (B, H, L, S)
    return _as_4d(mask, lead)


def requested_path(path: str | None) -> str | None:
    """The forced path: ``path``, else ``BLOCKZOO_ATTENTION_PATH``, else None (let the plan choose)."""
    if path is None:
        path = os.environ.get(PATH_ENV, "").strip().lower() or None
        where = PATH_ENV
    else:
        where = "path"
    if path is not None and path not in PATHS:
        raise ValueError(f"{where}={path!r} is not an attention path; expected one of {', '.join(PATHS)}")
    return path


def _check_mask(mask: Any, q: torch.Tensor, B: int, H: int, L: int, S: int, causal: bool) -> None:
    if mask is None:
        return
    if isinstance(mask, (BlockMask, SparseLayout)):
        kind = type(mask).__name__
        got = tuple(mask.shape[-2:]) if isinstance(mask, SparseLayout) else (mask.q_len, mask.kv_len)
        if got != (L, S):
            raise ValueError(f"{kind} is for L={got[0]}, S={got[1]}; the inputs have L={L}, S={S}")
        if isinstance(mask, BlockMask):
            mask.group_strides(B, H)
        else:
            CsrMask.of_layout(mask, B, H)
        if mask.device != q.device:
            raise ValueError(f"{kind} is on {mask.device} but q is on {q.device}")
        if causal and not (isinstance(mask, BlockMask) and mask.causal):
            raise ValueError(f"causal=True needs a block_mask built with causal=True, not a {kind}")
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor, a BlockMask or a SparseLayout, got {type(mask).__name__}")
    check_mask_dtype("mask", mask, q)
    check_broadcastable("mask", mask, (B, H, L, S))
    if mask.dim() < 2:
        raise ValueError(f"mask of shape {tuple(mask.shape)} must have at least 2 dims (L, S)")


@outside_graphs
def _as_tensor(mask: Any, stats: MaskStats | None, B: int, H: int) -> torch.Tensor:
    """A tensor mask for the dense path (structured masks are expanded, causal included)."""
    if isinstance(mask, torch.Tensor):
        return mask
    st = stats if stats is not None else analysis.mask_stats(mask, 0, 0, False, [], B, H)
    if st.dense_keep is None:
        st.dense_keep = analysis.keep_with_causal(mask, st)
    return st.dense_keep


def _all_keep(L: int, S: int, device: torch.device) -> torch.Tensor:
    """A cached all-True (L, S) mask (a forced sparse path with no mask reuses its plan)."""
    key = (L, S, device)
    if key not in _ALL_KEEP:
        if len(_ALL_KEEP) >= 8:
            _ALL_KEEP.pop(next(iter(_ALL_KEEP)))
        _ALL_KEEP[key] = torch.ones(L, S, dtype=torch.bool, device=device)
    return _ALL_KEEP[key]


def _csr_ops_available(device: torch.device) -> bool:
    """Whether the compiled sparse ops have kernels for ``device`` (and the torch backend is not forced)."""
    return backend.requested() != "torch" and device.type in sparse_ops._KERNEL_DEVICES


@outside_graphs
def plan_for(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, causal: bool = False,
             dropout_p: float = 0.0, device: str | None = None) -> AttentionPlan:
    """The (cached) plan of this call; runs outside torch.compile graphs (it may sync the host once)."""
    B, H, L, D = q.shape
    S = k.shape[2]
    interp, csr_ok = False, True
    if q.is_cuda:
        dev = "cuda"
    else:  # Triton forced on the CPU under the interpreter: plan as the GPU it stands in for
        interp = q.device.type == "cpu" and backend.requested() == "triton" and backend.interpreting()
        dev = "cuda" if interp else q.device.type
        csr_ok = _csr_ops_available(q.device)
    dev = device or dev
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if mask is None:
        return make_plan(None, (B, H, L, S, D), k.shape[1], q.dtype, causal, training, dev, dropout_p)
    stats = analysis.mask_stats(mask, L, S, causal, cost.candidate_tiles(dev, interp), B, H)
    return make_plan(stats, (B, H, L, S, D), k.shape[1], q.dtype, causal, training, dev, dropout_p,
                     dev == "cuda" or csr_ok)


def _combine(mask: torch.Tensor, causal: bool, L: int, S: int) -> torch.Tensor:
    return masks.apply_keep(mask, masks.causal_keep(L, S, mask.device)) if causal else mask


DENSE_MASK_CACHE_BYTES = 64 * 2**20  # a static mask's SDPA-ready additive copy is kept up to this size


def _sdpa_mask(full: torch.Tensor, dtype: torch.dtype, find_empty: bool,
               additive: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mask for SDPA, rows to zero after it or None). Rows with nothing kept get a harmless mask
    (SDPA would return NaN there); ``additive`` converts a bool mask to the additive form SDPA
    otherwise builds on every call (two kernels and an allocation)."""
    row_empty = None
    if find_empty:
        if full.dtype == torch.bool:
            row_empty = ~full.any(-1, keepdim=True)
            full = full | row_empty
        else:
            row_empty = torch.isneginf(full).all(-1, keepdim=True)
            full = full.to(dtype).masked_fill(row_empty, 0.0)
    if additive and full.numel() * torch.finfo(dtype).bits // 8 <= DENSE_MASK_CACHE_BYTES:
        if full.dtype == torch.bool:
            full = torch.zeros(full.shape, dtype=dtype, device=full.device).masked_fill_(~full, float("-inf"))
        else:
            full = full.to(dtype)
    return full, row_empty


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, causal: bool, scale: float,
           dropout_p: float, stats: MaskStats | None) -> torch.Tensor:
    """Masked SDPA; fully masked rows are unmasked for the kernel and zeroed after it. With ``stats``
    (a static mask) the SDPA-ready mask is built once per (causal, dtype) and reused."""
    L, S = q.shape[2], k.shape[2]
    fix = stats.dense_fix.get((causal, q.dtype)) if stats is not None else None
    if fix is None:
        fix = _sdpa_mask(_combine(mask, causal, L, S), q.dtype, stats is None or stats.empty_rows != 0,
                         stats is not None)
        if stats is not None:
            stats.dense_fix[(causal, q.dtype)] = fix
    safe, row_empty = fix
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, dropout_p=dropout_p, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out if row_empty is None else out.masked_fill(row_empty, 0.0)


@outside_graphs
def _structure(build, *args):
    """A path's mask structure, built on first use (eagerly, also under torch.compile: it syncs)."""
    return build(*args)


def _triton_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return backend.choose(_OP, q, k, v) == "triton"


def _run_block_sparse(q, k, v, mask, plan: AttentionPlan, scale: float,
                      key_keep: torch.Tensor | None) -> torch.Tensor | None:
    if not _triton_ok(q, k, v):
        return None
    from blockzoo.ops.triton.blocksparse_attention import blocksparse_attention

    stats = plan.stats
    assert stats is not None
    tile = plan.tile or (cost.candidate_tiles("cuda")[0] if q.is_cuda else cost.INTERPRETER_TILE)
    bm = _structure(analysis.block_mask_for, stats, mask, tile)
    return backend.run_fast(_OP, q, blocksparse_attention, q, k, v, bm, scale, key_keep)


def _run_csr(q, k, v, mask, plan: AttentionPlan, scale: float,
             key_keep: torch.Tensor | None) -> torch.Tensor | None:
    stats = plan.stats
    assert stats is not None
    csr = _structure(analysis.csr_mask_for, stats, mask)
    if q.is_cuda or (backend.requested() == "triton" and backend.interpreting()):
        if not _triton_ok(q, k, v):
            return None
        from blockzoo.ops.triton.csr_attention import csr_attention

        return backend.run_fast(_OP, q, csr_attention, q, k, v, csr, scale, key_keep)
    if not _csr_ops_available(q.device):
        backend.warn_once(_OP, f"the compiled sparse ops have no {q.device.type} kernels for the csr path")
        return None
    return _csr_with_sparse_ops(q, k, v, csr, scale, key_keep)


def _csr_with_sparse_ops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, csr: CsrMask, scale: float,
                         key_keep: torch.Tensor | None) -> torch.Tensor:
    """sddmm -> sparse_softmax -> spmm (the compiled CPU ops); memory O(nnz). Patterns lead the batch dims;
    padding keys get -inf scores (read through the layout's column of each entry)."""
    B, H, L, D = q.shape
    k, v = masks.repeat_kv(k, H), masks.repeat_kv(v, H)
    heads_lead = csr.heads > 1 and csr.batch == 1  # one pattern per head: heads first
    per_pair = csr.groups > 1 and csr.heads > 1  # one pattern per (batch, head)
    if heads_lead:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    elif per_pair:
        q, k, v = (t.reshape(B * H, *t.shape[2:]) for t in (q, k, v))
    scores = sparse_ops.sddmm(q.contiguous(), k.contiguous(), csr.layout, scale)
    if key_keep is not None:
        cols = csr.layout.entries()[1]  # (G, P)
        if heads_lead:  # scores (H, B, P)
            kept = key_keep[:, cols].transpose(0, 1)
        elif per_pair:  # scores (B * H, P)
            kept = key_keep.repeat_interleave(H, 0).gather(1, cols)
        elif csr.batch > 1:  # scores (B, H, P)
            kept = key_keep.gather(1, cols)[:, None]
        else:  # shared: scores (B, H, P)
            kept = key_keep[:, cols[0]][:, None]
        scores = scores.masked_fill(~kept, float("-inf"))
    out = sparse_ops.spmm(sparse_ops.sparse_softmax(scores, csr.layout), csr.layout, v.contiguous())
    if heads_lead:
        return out.transpose(0, 1)
    return out.reshape(B, H, L, D)


def _with_padding(mask: torch.Tensor, key_keep: torch.Tensor | None) -> torch.Tensor:
    return masks.apply_keep(mask, None if key_keep is None else key_keep[:, None, None, :])


def _prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, causal: bool,
             key_padding_mask: torch.Tensor | None) -> tuple[Any, bool, torch.Tensor | None]:
    """Check the inputs. Returns (mask, causal still to apply, (B, S) key keep or None)."""
    check_qkv(q, k, v)
    B, H, L, _ = q.shape
    S = k.shape[2]
    _check_mask(mask, q, B, H, L, S, causal)
    if isinstance(mask, BlockMask) and mask.causal:
        causal = False  # already in the block mask
    if key_padding_mask is None:
        return mask, causal, None
    check_tensor("key_padding_mask", key_padding_mask)
    return mask, causal, masks.keep_from_key_padding(key_padding_mask.to(q.device), B, S)[:, 0, 0]


def _default_scale(D: int) -> float:
    """1 / sqrt(D), SDPA's default (scores are all 0 when D = 0, whatever the scale)."""
    return 1.0 / math.sqrt(D) if D > 0 else 1.0


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None, causal: bool = False,
                     scale: float | None = None, dropout_p: float = 0.0,
                     key_padding_mask: torch.Tensor | None = None, path: str | None = None,
                     softcap: float | None = None, sink_logits: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale, masked) v for q (B, H, L, D), k/v (B, H_kv, S, D) (grouped-query allowed),
    or SDPA's shapes: q (..., L, D), k (..., S, D), v (..., S, Dv) with leading dims that broadcast.

    ``mask``: bool (True = keep) or additive float tensor broadcastable to (B, H, L, S) (or to
    (..., L, S)), a ``BlockMask`` (``blockzoo.ops.block_mask``) or a ``SparseLayout`` ((L, S) shared,
    (B, L, S) per batch element or (B * H, L, S) per head). ``key_padding_mask``: bool (B, S), True =
    padding, for 4-D inputs (applied inside the sparse kernels: a static mask keeps its cached plan).
    ``causal``: keep j <= i. Fully masked rows (every row when S = 0) give zeros. ``path`` forces one of
    ``PATHS`` (else ``BLOCKZOO_ATTENTION_PATH``, else the plan's choice; see ``explain``); a path that
    cannot apply an additive mask's finite values is never chosen for it, and forcing it raises.
    ``softcap`` c (> 0, None = off): scores become c · tanh(scores / c) before the mask. ``sink_logits``
    (H,): a logit per query head joining the softmax denominator with no value (attention sinks). Both
    run on the dense path only (flex_attention with a ``score_mod`` on CUDA, the torch path elsewhere);
    the same rule: no other path is chosen for them, forcing one raises.
    """
    q, k, v = autocast.cast(_OP, q, k, v)
    forced = requested_path(path)
    q4, k4, v4, mask, lead = _to_4d(q, k, v, mask, key_padding_mask)
    if knobs.active(softcap, sink_logits):
        knobs.check(softcap, sink_logits, q4)
        knobs.refuse_forced(forced, softcap, sink_logits)
        out = _knob_attention(q4, k4, v4, mask, causal, scale, dropout_p, key_padding_mask, softcap, sink_logits)
        return out if lead is None else out.reshape(*lead, *out.shape[-2:])
    out = _attention(q4, k4, v4, mask, causal, scale, dropout_p, key_padding_mask, forced)
    return out if lead is None else out.reshape(*lead, *out.shape[-2:])


def _to_4d(q: Any, k: Any, v: Any, mask: Any, key_padding_mask: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, tuple[int, ...] | None]:
    """(q, k, v, mask) as 4-D inputs, and the leading dims to restore (None: the inputs were 4-D)."""
    if (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
            and q.dim() == k.dim() == v.dim() == 4 and q.shape[0] == k.shape[0] == v.shape[0]):
        return q, k, v, mask, None  # the common case: check_qkv checks the rest
    _check_ranks(q, k, v)
    if key_padding_mask is not None:
        raise ValueError(f"key_padding_mask needs 4-D q, k, v of one batch size, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}; pass the padding as a (..., 1, S) mask instead")
    lead = _leading(q, k, v)
    return (*(_as_4d(t, lead) for t in (q, k, v)), _mask_as_4d(mask, lead), lead)


def _knob_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, causal: bool,
                    scale: float | None, dropout_p: float, key_padding_mask: torch.Tensor | None,
                    softcap: float | None, sink_logits: torch.Tensor | None) -> torch.Tensor:
    """``masked_attention`` with softcap or sinks on 4-D inputs: the dense path (see ``knobs``), with a
    structured mask expanded and key padding folded into the mask."""
    B, H, L, D = q.shape
    S = k.shape[2]
    mask, causal, key_keep = _prepare(q, k, v, mask, causal, key_padding_mask)
    scale = _default_scale(D) if scale is None else float(scale)
    backend.record_path(_OP, "dense")
    if isinstance(mask, BlockMask) and mask.band is not None and key_keep is None:  # bounds, no (L, S) tensor
        return knobs.attention(q, k, v, None, causal, scale, dropout_p, softcap, sink_logits, band=mask.band)
    if mask is not None and not isinstance(mask, torch.Tensor):
        mask = _as_tensor(mask, None, B, H)
    if key_keep is not None:
        mask = _with_padding(_all_keep(L, S, q.device) if mask is None else mask, key_keep)
    return knobs.attention(q, k, v, mask, causal, scale, dropout_p, softcap, sink_logits)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any, causal: bool, scale: float | None,
               dropout_p: float, key_padding_mask: torch.Tensor | None, forced: str | None) -> torch.Tensor:
    """``masked_attention`` on 4-D inputs."""
    B, H, L, D = q.shape
    S = k.shape[2]
    mask, causal, key_keep = _prepare(q, k, v, mask, causal, key_padding_mask)
    scale = _default_scale(D) if scale is None else float(scale)
    if q.numel() == 0 or S == 0:  # no output, or no keys (every row fully masked): nothing to plan
        backend.record_path(_OP, "dense")
        return torch_ref.attention(q, k, v, None, False, scale)
    if mask is None and key_keep is None and forced in (None, "flash"):
        backend.record_path(_OP, "flash")
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale,
                                              enable_gqa=H != k.shape[1])
    if forced == "flash":
        raise ValueError("path='flash' cannot apply a mask or key padding; use another path")
    if dropout_p > 0 and forced in ("block_sparse", "csr"):
        raise ValueError(f"path={forced!r} does not support dropout (dropout_p={dropout_p}); use 'dense'")
    if mask is None and forced in (None, "dense"):  # key padding alone: masked SDPA
        backend.record_path(_OP, "dense")
        return _dense(q, k, v, _with_padding(_all_keep(L, S, q.device), key_keep), causal, scale, dropout_p, None)
    if mask is None:
        mask = _all_keep(L, S, q.device)
    plan = plan_for(q, k, v, mask, causal, dropout_p)  # also when dense is forced: its statistics hold the
    #                                                    dense path's cached SDPA-ready mask
    if forced in ("block_sparse", "csr") and plan.stats is not None and plan.stats.additive:
        raise ValueError(f"path={forced!r} cannot apply an additive mask's finite values (only 0 and -inf); "
                         "use path='dense' or None")
    chosen = forced or plan.path
    out = None
    if chosen == "block_sparse":
        out = _run_block_sparse(q, k, v, mask, plan, scale, key_keep)
    elif chosen == "csr":
        out = _run_csr(q, k, v, mask, plan, scale, key_keep)
    if out is not None:
        backend.record_path(_OP, chosen)
        return out
    backend.record_path(_OP, "dense")
    m = _as_tensor(mask, plan.stats, B, H)
    if key_keep is None:
        return _dense(q, k, v, m, causal, scale, dropout_p, plan.stats)
    return _dense(q, k, v, _with_padding(_combine(m, causal, L, S), key_keep), False, scale, dropout_p, None)


def explain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None, causal: bool = False,
            dropout_p: float = 0.0, key_padding_mask: torch.Tensor | None = None,
            path: str | None = None, softcap: float | None = None,
            sink_logits: torch.Tensor | None = None) -> str:
    """Which path ``masked_attention`` takes for these inputs, why, and every path's estimated cost."""
    q, k, v = autocast.cast(_OP, q, k, v)
    forced = requested_path(path)
    q, k, v, mask, _ = _to_4d(q, k, v, mask, key_padding_mask)
    mask, causal, key_keep = _prepare(q, k, v, mask, causal, key_padding_mask)
    if knobs.active(softcap, sink_logits):
        knobs.check(softcap, sink_logits, q)
        knobs.refuse_forced(forced, softcap, sink_logits)
        return knobs.explain_text(softcap, sink_logits, q, dropout_p)
    if q.numel() == 0 or k.shape[2] == 0:
        return (f"masked_attention: path=dense (L={q.shape[2]}, S={k.shape[2]}: an empty output or no keys, "
                "so zeros without a plan)")
    if mask is None and key_keep is not None:
        plan_text = "masked_attention: path=dense (key padding alone: masked SDPA, no analysis)"
        return plan_text if forced in (None, "dense") else plan_text + f"; forced {forced}"
    plan = plan_for(q, k, v, mask, causal, dropout_p)
    text = plan.explain()
    if key_keep is not None:
        text += "\n  key padding: applied inside the sparse kernels (dense: folded into the mask)"
    if forced is not None and forced != plan.path:
        text = text.replace(f"path={plan.path}", f"path={forced} (forced; the plan picks {plan.path})", 1)
    return text
