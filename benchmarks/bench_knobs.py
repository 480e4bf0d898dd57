"""Benchmark of the attention knobs (suite "knobs"): ``masked_attention`` with ``softcap`` and ``sink_logits``
against compiled flex_attention with the same ``score_mod`` and the same mask, bf16, forward and forward+backward.

Our knob path on CUDA is flex_attention itself (a soft-cap ``score_mod``, the mask as a flex block mask, the
sink applied from the log-sum-exp), so the rows measure what the dispatch adds or saves against flex written
by hand: for ``softcap`` the peer is flex with the same ``score_mod`` and block mask; for ``sinks`` the peer is
the usual flex formulation, an extra key of zeros whose score the ``score_mod`` replaces by the sink logit
(K and V concatenated per call), with the same block mask plus that key. Masks: causal, and a causal sliding
window of 1024 (ours: a band ``BlockMask``, flex: the window ``mask_mod``). Target: ratio (peer / ours) >= 1.0.
Every case is first checked against the float32 torch reference (``check:`` lines).

Usage: ``python benchmarks/bench_knobs.py`` (needs a CUDA GPU; writes results/<date>-<device>-knobs.json),
``--quick`` (one shape), ``--smoke`` (tiny shapes on the CPU: the torch path against eager flex, forward only,
timed with a plain timer; ``--out FILE`` writes its rows there, nothing is written to results/ by default).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch
from common import bench, cpu_median_ms, print_table, row, write_results

from blockzoo import ops
from blockzoo.ops import torch_ref

SOFTCAP = 30.0
WINDOW = 1024
SHAPES = [(4, 16, 4096, 64), (1, 16, 8192, 128)]  # (B, H, L, D)
KNOBS = ("softcap", "sinks", "softcap+sinks")
_FLEX: dict[str, Callable] = {}


def flex_attention(compiled: bool) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention as flex

    if not compiled:
        return flex
    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex, dynamic=False)
    return _FLEX["fn"]


def peer(knob: str, L: int, window: int | None, device: str, compiled: bool) -> Callable:
    """flex_attention written by hand for ``knob`` with the same score_mod and mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    cap = SOFTCAP if "softcap" in knob else None
    sinks = "sinks" in knob
    S = L + 1 if sinks else L  # the sink is key S - 1 = L

    def mask_mod(b, h, qi, ki):
        keep = ki <= qi
        if window is not None:
            keep = keep & (qi - ki <= window)
        return (keep | (ki == L)) if sinks else keep

    block = create_block_mask(mask_mod, None, None, L, S, device=device)
    fn = flex_attention(compiled)
    if not sinks:
        def softcap_mod(score, b, h, qi, ki):
            return cap * torch.tanh(score / cap)
        return lambda q, k, v, sink: fn(q, k, v, score_mod=softcap_mod, block_mask=block)

    held: list[torch.Tensor] = []  # the sink logits the score_mod reads (swapped, never recompiled)

    def sink_mod(score, b, h, qi, ki):
        if cap is not None:
            score = cap * torch.tanh(score / cap)
        return torch.where(ki == L, held[0][h].to(score.dtype), score)

    def run(q, k, v, sink):
        held[:] = [sink]
        zeros = torch.zeros_like(k[:, :, :1])
        return fn(q, torch.cat([k, zeros], 2), torch.cat([v, zeros], 2), score_mod=sink_mod, block_mask=block)
    return run


def ours(knob: str, L: int, window: int | None, device: str) -> Callable:
    cap = SOFTCAP if "softcap" in knob else None
    sinks = "sinks" in knob
    mask = ops.band_mask((-window, 0), L, L, causal=True, device=device) if window is not None else None
    causal = window is None
    return lambda q, k, v, sink: ops.masked_attention(q, k, v, mask=mask, causal=causal, softcap=cap,
                                                      sink_logits=sink if sinks else None)


def reference(knob: str, q, k, v, sink, window: int | None) -> torch.Tensor:
    L = q.shape[2]
    d = torch.arange(L, device=q.device)[None, :] - torch.arange(L, device=q.device)[:, None]
    keep = (d <= 0) & (d >= -(window if window is not None else L))
    return torch_ref.attention(q.float(), k.float(), v.float(), keep, False, None,
                               softcap=SOFTCAP if "softcap" in knob else None,
                               sink_logits=sink.float() if "sinks" in knob else None)


def inputs(B, H, L, D, device, dtype, grad):
    g = torch.Generator(device=device).manual_seed(0)
    qkv = [torch.randn(B, H, L, D, device=device, dtype=dtype, generator=g).requires_grad_(grad) for _ in range(3)]
    sink = torch.randn(H, device=device, dtype=torch.float32, generator=g).requires_grad_(grad)
    return qkv, sink


def step(fn: Callable, qkv, sink, backward: bool) -> Callable[[], object]:
    if not backward:
        def fwd():
            with torch.no_grad():
                return fn(*qkv, sink)
        return fwd
    grad = torch.randn_like(qkv[0])

    def fwd_bwd():
        for t in (*qkv, sink):
            t.grad = None
        fn(*qkv, sink).backward(grad)
    return fwd_bwd


def check(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    err = float((out.float() - ref).norm() / ref.norm())
    print(f"check: {name}: rel err {err:.2e} (tol {tol:.0e})")
    if not err < tol:
        raise SystemExit(f"bench_knobs.py: {name} differs from the reference (rel err {err:.3g})")


def cases(shapes, windows, backwards):
    for B, H, L, D in shapes:
        for window in windows:
            for knob in KNOBS:
                for backward in backwards:
                    yield (B, H, L, D), window, knob, backward


def gpu_rows(shapes) -> list[dict]:
    rows = []
    for (B, H, L, D), window, knob, backward in cases(shapes, (None, WINDOW), (False, True)):
        mask_name = "causal" if window is None else f"window {window}"
        name = f"{knob} {mask_name} B={B} H={H} L={L} D={D} {'fwd+bwd' if backward else 'fwd'}"
        qkv, sink = inputs(B, H, L, D, "cuda", torch.bfloat16, backward)
        a, b = ours(knob, L, window, "cuda"), peer(knob, L, window, "cuda", True)
        if not backward:
            with torch.no_grad():
                ref = reference(knob, *(t[:1, :2] for t in qkv), sink[:2], window)
                check(f"{name} ours", a(*(t[:1, :2] for t in qkv), sink[:2]), ref, 2e-2)
                check(f"{name} flex", b(*(t[:1, :2] for t in qkv), sink[:2]), ref, 2e-2)
        t_ours, t_peer = (bench(step(f, qkv, sink, backward)) for f in (a, b))
        rows.append(row(name, "flex_attention (same score_mod, mask)", t_peer, t_ours, target=1.0))
        print(rows[-1])
        del qkv, sink
        torch.cuda.empty_cache()
    return rows


def smoke_rows() -> list[dict]:
    """Tiny CPU cases: our torch path against eager flex (forward only), both checked against float64."""
    rows = []
    for (B, H, L, D), window, knob, _ in cases([(1, 2, 64, 16)], (None, 16), (False,)):
        mask_name = "causal" if window is None else f"window {window}"
        name = f"{knob} {mask_name} B={B} H={H} L={L} D={D} fwd [cpu smoke]"
        qkv, sink = inputs(B, H, L, D, "cpu", torch.float32, False)
        a, b = ours(knob, L, window, "cpu"), peer(knob, L, window, "cpu", False)
        ref = reference(knob, *(t.double() for t in qkv), sink.double(), window).float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager flex: unfused on the CPU
            with torch.no_grad():
                check(f"{name} ours", a(*qkv, sink), ref, 1e-5)
                check(f"{name} flex", b(*qkv, sink), ref, 1e-5)
            t_ours, t_peer = (cpu_median_ms(step(f, qkv, sink, False)) for f in (a, b))
        rows.append(row(name, "flex_attention eager (same score_mod, mask)", t_peer, t_ours))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the first shape")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU cases (no GPU): correctness and a plain timer")
    parser.add_argument("--out", default=None, help="with --smoke: write the rows to this JSON file")
    args = parser.parse_args()
    if args.smoke:
        rows = smoke_rows()
        print_table(rows)
        if args.out:
            meta = {"date": datetime.date.today().isoformat(), "device": "cpu", "torch": torch.__version__,
                    "command": " ".join(["python"] + sys.argv), "smoke": True}
            Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
            print(f"wrote {args.out}")
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench_knobs.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "--smoke runs tiny CPU cases")
    torch._dynamo.config.cache_size_limit = 64
    rows = gpu_rows(SHAPES[:1] if args.quick else SHAPES)
    print_table(rows)
    print(f"wrote {write_results('knobs', rows)}")


if __name__ == "__main__":
    main()
