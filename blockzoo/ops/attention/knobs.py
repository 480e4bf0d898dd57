"""The logit knobs of ``masked_attention``: soft-capping and attention sinks.

Both change the scores before the softmax (``softcap``: c · tanh(s / c), before the mask) or its
denominator (``sink_logits``: one logit per query head, no value), so only a path that computes
explicit scores can apply them: ``dense`` does (flex_attention with a ``score_mod`` on CUDA, the
torch reference elsewhere); ``flash``, ``block_sparse`` and ``csr`` cannot, are never chosen for
them and raise when forced. The sink is applied after flex_attention from its log-sum-exp:
out · sigmoid(lse - sink), which is what a sink in the denominator gives.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from blockzoo.ops import backend, masks, torch_ref
from blockzoo.ops.attention.analysis import outside_graphs
from blockzoo.ops.block_mask import band_dense
from blockzoo.ops.checks import FLOATS

FLEX_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_flex_compiled: dict[str, Callable] = {}
_softcap_mods: dict[float, Callable] = {}
_flex_blocks: dict[tuple[int, int, torch.device, bool, tuple[int, int] | None], Any] = {}


def active(softcap: float | None, sink_logits: torch.Tensor | None) -> bool:
    """Whether a call asks for a knob."""
    return softcap is not None or sink_logits is not None


def names(softcap: float | None, sink_logits: torch.Tensor | None) -> str:
    """'softcap', 'sinks' or 'softcap and sinks' (for messages)."""
    got = [n for n, on in (("softcap", softcap is not None), ("sinks", sink_logits is not None)) if on]
    return " and ".join(got)


def check(softcap: float | None, sink_logits: torch.Tensor | None, q: torch.Tensor) -> None:
    """softcap a finite number > 0; sink_logits a float tensor (H,) on q's device, H = q's heads."""
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
            raise TypeError(f"softcap must be a number or None, got {type(softcap).__name__}")
        if not (math.isfinite(softcap) and softcap > 0):
            raise ValueError(f"softcap must be a finite number > 0 (None = off), got {softcap}")
    if sink_logits is not None:
        if not isinstance(sink_logits, torch.Tensor):
            raise TypeError(f"sink_logits must be a tensor of shape (H,) or None, got {type(sink_logits).__name__}")
        if sink_logits.dtype not in FLOATS:
            raise TypeError(f"sink_logits must be floating point, got {sink_logits.dtype}")
        if tuple(sink_logits.shape) != (q.shape[1],):
            raise ValueError(f"sink_logits must have shape (H,) = ({q.shape[1]},), got {tuple(sink_logits.shape)}")
        if sink_logits.device != q.device:
            raise ValueError(f"sink_logits is on {sink_logits.device} but q is on {q.device}")


def refuse_forced(forced: str | None, softcap: float | None, sink_logits: torch.Tensor | None) -> None:
    """A forced path other than 'dense' cannot apply the knobs: raise."""
    if forced not in (None, "dense"):
        raise ValueError(f"path={forced!r} cannot apply {names(softcap, sink_logits)} (only the dense path "
                         "computes explicit scores); use path='dense' or None")


def explain_text(softcap: float | None, sink_logits: torch.Tensor | None, q: torch.Tensor,
                 dropout_p: float) -> str:
    """The line ``explain`` gives for a call with knobs."""
    how = ("flex_attention with a score_mod" if flex_eligible(q, dropout_p)
           else "the torch path (explicit scores)")
    return (f"masked_attention: path=dense ({names(softcap, sink_logits)}: applied on explicit scores by {how}; "
            "flash, block_sparse and csr cannot apply them)")


def flex_eligible(q: torch.Tensor, dropout_p: float) -> bool:
    """Whether the flex_attention path may run: CUDA, a dtype it takes, no dropout, the fast backend
    not turned off, and a flex_attention in this torch."""
    if not q.is_cuda or q.dtype not in FLEX_DTYPES or dropout_p > 0 or backend.requested() == "torch":
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _flex() -> Callable:
    """flex_attention, compiled once outside torch.compile graphs (eager flex is the unfused math)."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention
    if "fn" not in _flex_compiled:
        _flex_compiled["fn"] = torch.compile(flex_attention, dynamic=False)
    return _flex_compiled["fn"]


@outside_graphs
def flex_block_mask(L: int, S: int, device: torch.device, causal: bool, band: tuple[int, int] | None) -> Any:
    """A flex BlockMask for causal and/or a band lo <= j - i <= hi (None when neither), built once per shape."""
    from torch.nn.attention.flex_attention import create_block_mask

    if not causal and band is None:
        return None
    key = (L, S, device, causal, band)
    if key not in _flex_blocks:
        if len(_flex_blocks) >= 16:
            _flex_blocks.pop(next(iter(_flex_blocks)))
        lo, hi = band if band is not None else (-S - L, S + L)
        hi = min(hi, 0) if causal else hi

        def mask_mod(b, h, qi, ki):
            return (ki - qi >= lo) & (ki - qi <= hi)

        _flex_blocks[key] = create_block_mask(mask_mod, None, None, L, S, device=device)
    return _flex_blocks[key]


def score_mod_for(softcap: float | None, keep: torch.Tensor | None, bias: torch.Tensor | None) -> Callable | None:
    """The flex ``score_mod``: soft-cap, then drop (keep False -> -inf) and add the additive mask.
    ``keep`` and ``bias`` are 4-D, broadcast (stride 0) to (B, H, L, S)."""
    if softcap is None and keep is None and bias is None:
        return None
    if keep is None and bias is None:  # one function per cap: a compiled flex is not re-traced per call
        if softcap not in _softcap_mods:
            cap = float(softcap)

            def capped(score, b, h, qi, ki):
                return cap * torch.tanh(score / cap)

            _softcap_mods[softcap] = capped
        return _softcap_mods[softcap]

    def score_mod(score, b, h, qi, ki):
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if bias is not None:
            score = score + bias[b, h, qi, ki]
        if keep is not None:
            score = torch.where(keep[b, h, qi, ki], score, -float("inf"))
        return score

    return score_mod


def flex_attention_knobs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                         causal: bool, scale: float, softcap: float | None,
                         sink_logits: torch.Tensor | None, compiled: bool = True,
                         band: tuple[int, int] | None = None) -> torch.Tensor:
    """The knobs through flex_attention: ``mask`` (bool keep / additive, broadcastable to (B, H, L, S),
    key padding already folded in) read by the ``score_mod``; ``causal`` as a flex block mask; the sink
    from the log-sum-exp; ``band`` (lo, hi) keeps lo <= j - i <= hi through the flex block mask too (a
    band BlockMask: the tiles outside it are skipped). ``compiled=False`` runs eager flex (the CPU test of
    this path, forward only)."""
    from torch.nn.attention import flex_attention as flex

    B, H, L, _ = q.shape
    S = k.shape[2]
    keep = bias = None
    if mask is not None:
        full = masks.as_4d(mask).expand(B, H, L, S)
        if full.dtype == torch.bool:
            keep = full
        else:
            bias = full.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    block = flex_block_mask(L, S, q.device, causal, band)
    fn = _flex() if compiled else flex.flex_attention
    kwargs: dict[str, Any] = dict(score_mod=score_mod_for(softcap, keep, bias), block_mask=block, scale=scale,
                                  enable_gqa=H != k.shape[1])
    if hasattr(flex, "AuxRequest"):  # newer torch: return_lse is deprecated
        out, aux = fn(q, k, v, **kwargs, return_aux=flex.AuxRequest(lse=True))
        lse = aux.lse
    else:
        out, lse = fn(q, k, v, **kwargs, return_lse=True)
    empty = torch.isneginf(lse)[..., None]  # rows with nothing kept: zeros (flex may leave NaN there)
    if sink_logits is not None:
        keep_frac = torch.sigmoid(lse - sink_logits.to(lse.dtype)[None, :, None])  # Z / (Z + e^sink)
        out = (out.to(lse.dtype) * keep_frac[..., None]).to(q.dtype)
    return out.masked_fill(empty, 0.0)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
              scale: float, dropout_p: float, softcap: float | None,
              sink_logits: torch.Tensor | None, band: tuple[int, int] | None = None) -> torch.Tensor:
    """Attention with the knobs on the dense path: flex_attention where eligible (a failure is reported
    once and falls back), else the torch reference (explicit scores, fp32 accumulation). ``band``: a
    band mask lo <= j - i <= hi given as its bounds (then ``mask`` is None)."""
    if flex_eligible(q, dropout_p) and q.numel() and k.shape[2]:
        out = backend.run_fast("masked_attention", q, flex_attention_knobs, q, k, v, mask, causal, scale,
                               softcap, sink_logits, True, band)
        if out is not None:
            return out
    if band is not None:
        mask = band_dense(q.shape[2], k.shape[2], *band, device=q.device)
    return torch_ref.attention(q, k, v, mask, causal, scale, dropout_p, softcap=softcap, sink_logits=sink_logits)
