"""Benchmark of packed-document attention (suite "packed") on the GPU.

One row of B=1 packed documents (L = 8192 and 32768 tokens), H=16, D=64 and 128, bf16; document lengths
drawn from a log-normal with mean 512 and a long tail (sigma 1.0, the last document cut to fit the row).
Causal attention inside each document, never across, forward and forward+backward:

- ours: ``blockzoo.ops.masked_attention(q, k, v, ops.document_mask(cu_seqlens=...), causal=True)``, the
  path its planner picks (printed in the case name, ``explain`` printed before each shape);
- ``flex``: compiled ``flex_attention`` with the document ``mask_mod`` and its block mask built once;
- ``sdpa_bool``: SDPA with the dense (1, 1, L, L) bool mask.
Both masks' one-time builds (our analysis and block mask, flex's ``create_block_mask``) run before the
timing. ``ratio`` = peer_ms / ours_ms with the targets 1.3x flex and 3x SDPA-bool; every row also records
the peak memory (MiB, one forward or forward+backward call above what was allocated before) of ours and of
the peer. Each shape is first checked against SDPA run on every document alone (``check:`` lines).

Usage: ``python benchmarks/bench_packed.py [--lengths 8192,32768] [--head-dims 64,128]``;
``--smoke`` runs tiny shapes on the CPU (no timing, no results file): the three implementations agree.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench, peak_mb, print_table, row, write_results  # noqa: E402

from blockzoo import ops  # noqa: E402
from blockzoo.ops.attention.dispatch import plan_for  # noqa: E402

H, MEAN_DOC, SIGMA = 16, 512, 1.0
TARGETS = {"flex": 1.3, "sdpa_bool": 3.0}


def doc_lengths(L: int, seed: int = 0, mean: float = MEAN_DOC, sigma: float = SIGMA) -> list[int]:
    """Log-normal document lengths (mean ``mean``) filling exactly ``L`` tokens, the last one cut to fit."""
    gen = torch.Generator().manual_seed(seed)
    mu = math.log(mean) - sigma ** 2 / 2  # the log-normal's mean is exp(mu + sigma^2 / 2)
    out: list[int] = []
    while sum(out) < L:
        out.append(max(1, int(torch.empty(1).log_normal_(mu, sigma, generator=gen))))
    out[-1] -= sum(out) - L
    return out


def cu_seqlens(L: int, seed: int = 0) -> torch.Tensor:
    return torch.tensor([0, *doc_lengths(L, seed)]).cumsum(0)


# ------------------------------------------------------------------------------------ the three sides
def ours(mask: torch.Tensor) -> Callable:
    return lambda q, k, v: ops.masked_attention(q, k, v, mask, causal=True)


def sdpa_bool(mask: torch.Tensor) -> Callable:
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


_FLEX: dict[str, Callable] = {}


def flex(doc_ids: torch.Tensor, compile_it: bool = True) -> Callable:
    """flex_attention with the document mask_mod; its block mask built here, once."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    ids = doc_ids.reshape(-1)

    def document_causal(b, h, q_idx, kv_idx):
        return (ids[q_idx] == ids[kv_idx]) & (q_idx >= kv_idx)

    L = ids.numel()
    block = create_block_mask(document_causal, None, None, L, L, device=ids.device)
    if compile_it and "flex" not in _FLEX:
        _FLEX["flex"] = torch.compile(flex_attention)
    fn = _FLEX["flex"] if compile_it else flex_attention
    return lambda q, k, v: fn(q, k, v, block_mask=block)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """SDPA on every document alone (causal), concatenated."""
    b = cu.tolist()
    return torch.cat([F.scaled_dot_product_attention(q[..., s:e, :], k[..., s:e, :], v[..., s:e, :], is_causal=True)
                      for s, e in zip(b[:-1], b[1:])], dim=2)


# ------------------------------------------------------------------------------------------ helpers
def inputs(L: int, D: int, device: str, dtype: torch.dtype, grad: bool, heads: int = H) -> list[torch.Tensor]:
    return [torch.randn(1, heads, L, D, device=device, dtype=dtype, requires_grad=grad) for _ in range(3)]


def fwd(fn: Callable, qkv: list[torch.Tensor]) -> Callable[[], object]:
    def step():
        with torch.no_grad():
            return fn(*qkv)
    return step


def fwd_bwd(fn: Callable, qkv: list[torch.Tensor]) -> Callable[[], None]:
    grad = torch.randn_like(qkv[0])

    def step():
        for t in qkv:
            t.grad = None
        fn(*qkv).backward(grad)
    return step


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).norm().item() / b.float().norm().clamp_min(1e-30).item()


def check(sides: dict[str, Callable], L: int, D: int, cu: torch.Tensor, device: str, dtype: torch.dtype,
          heads: int, tol: float, forward_only: tuple[str, ...] = ()) -> bool:
    """Every side against SDPA on each document alone, output and gradients (``forward_only``: output only);
    prints one line per side."""
    ok = True
    q, k, v = inputs(L, D, device, dtype, True, heads)
    go = torch.randn_like(q)
    ref = reference(q, k, v, cu)
    ref_g = torch.autograd.grad(ref, (q, k, v), go)
    for name, fn in sides.items():
        if name in forward_only:
            with torch.no_grad():
                err = rel_err(fn(q.detach(), k.detach(), v.detach()), ref)
            ok &= err <= tol
            print(f"check: {name} L={L} D={D}: rel err out {err:.1e} (forward only){'  <-- FAIL' if err > tol else ''}")
            continue
        out = fn(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), go)
        errs = [rel_err(out, ref)] + [rel_err(g, r) for g, r in zip(grads, ref_g)]
        bad = max(errs) > tol
        ok &= not bad
        print(f"check: {name} L={L} D={D}: rel err out {errs[0]:.1e}, dq {errs[1]:.1e}, dk {errs[2]:.1e}, "
              f"dv {errs[3]:.1e}{'  <-- FAIL' if bad else ''}", flush=True)
    return ok


def timed(step: Callable[[], object]) -> float:
    step()  # analysis, block masks, compilation
    torch.cuda.synchronize()
    return bench(step)


# --------------------------------------------------------------------------------------------- runs
def run_gpu(lengths: list[int], head_dims: list[int]) -> list[dict]:
    rows: list[dict] = []
    for L in lengths:
        cu = cu_seqlens(L).cuda()
        doc_ids = ops.doc_ids_from_cu_seqlens(cu, L)
        mask = ops.document_mask(doc_ids)  # (1, 1, L, L) bool: ours analyses it once, SDPA reads it
        n_docs = cu.numel() - 1
        print(f"L={L}: {n_docs} documents, mean {L / n_docs:.0f}, longest {int((cu[1:] - cu[:-1]).max())} tokens, "
              f"density {100 * mask.sum(dtype=torch.int64).item() / L ** 2:.3g}%", flush=True)
        peers = {"flex": flex(doc_ids), "sdpa_bool": sdpa_bool(mask)}
        for D in head_dims:
            sides = {"ours": ours(mask), **peers}
            check(sides, L, D, cu, "cuda", torch.bfloat16, 2, 3e-2)
            print(ops.explain(*inputs(L, D, "cuda", torch.bfloat16, True), mask, causal=True), flush=True)
            for mode, wrap in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                qkv = inputs(L, D, "cuda", torch.bfloat16, mode != "fwd")
                path = plan_for(*qkv, mask, True).path
                mine = timed(wrap(sides["ours"], qkv))
                mine_mb = peak_mb(wrap(sides["ours"], qkv))
                for peer in ("flex", "sdpa_bool"):
                    try:
                        peer_ms = timed(wrap(sides[peer], qkv))
                        peer_mb = peak_mb(wrap(sides[peer], qkv))
                    except torch.OutOfMemoryError:
                        print(f"{peer} L={L} D={D} {mode}: out of memory", flush=True)
                        peer_ms = peer_mb = None
                        torch.cuda.empty_cache()
                    r = row(f"packed L={L} D={D} {mode} [{path}]", peer, peer_ms, mine, target=TARGETS[peer])
                    r.update(ours_peak_mb=round(mine_mb, 1),
                             peer_peak_mb=None if peer_mb is None else round(peer_mb, 1))
                    rows.append(r)
                print_table(rows[-2:])
                for r in rows[-2:]:
                    print(f"  {r['case']} vs {r['peer']}: ratio {r['ratio']} (target {r['target']}x) "
                          f"{'MET' if r['met'] else 'not met'}", flush=True)
        del mask, peers
        torch.cuda.empty_cache()
    return rows


def run_smoke() -> bool:
    """Tiny shapes on the CPU: ours, SDPA-bool and (where it runs) eager flex_attention agree with SDPA per
    document, forward and backward, in float32. No timing."""
    L, D, heads = 192, 16, 2
    cu = torch.tensor([0, *doc_lengths(L, 0, mean=24)]).cumsum(0)
    doc_ids = ops.doc_ids_from_cu_seqlens(cu, L)
    mask = ops.document_mask(doc_ids)
    sides = {"ours": ours(mask), "sdpa_bool": sdpa_bool(mask)}
    try:
        sides["flex"] = flex(doc_ids, compile_it=False)
        sides["flex"](*inputs(L, D, "cpu", torch.float32, False, heads))
    except Exception as e:  # flex_attention may not run eagerly on this CPU build
        sides.pop("flex", None)
        print(f"smoke: flex_attention skipped on the CPU ({type(e).__name__}: {str(e)[:120]})")
    print(ops.explain(*inputs(L, D, "cpu", torch.float32, False, heads), mask, causal=True))
    ok = check(sides, L, D, cu, "cpu", torch.float32, heads, 1e-4, forward_only=("flex",))  # no CPU flex backward
    print("smoke: ok" if ok else "smoke: FAILED")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, no timing")
    parser.add_argument("--lengths", default="8192,32768", help="row lengths L (comma-separated)")
    parser.add_argument("--head-dims", default="64,128", help="head dims D (comma-separated)")
    args = parser.parse_args()
    if args.smoke:
        return 0 if run_smoke() else 1
    if not torch.cuda.is_available():
        print("bench_packed.py needs a CUDA GPU (use --smoke on the CPU)", file=sys.stderr)
        return 1
    rows = run_gpu([int(x) for x in args.lengths.split(",")], [int(x) for x in args.head_dims.split(",")])
    print_table(rows)
    print(f"wrote {write_results('packed', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
