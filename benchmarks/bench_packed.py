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

End to end (``--e2e``, on by default): one gpt_small training step (bf16 autocast forward, loss, backward,
fused AdamW) on a batch of packed rows of 8192 tokens, each row its own log-normal documents; blockzoo built
from YAML (``doc_ids`` given as an ``ops.DocumentMask`` whose block mask is built before the timing) against
``bench_e2e``'s plain PyTorch GPT-2 with positions restarting per document and ``flex_attention`` with the
document ``mask_mod``'s block mask (``create_block_mask``, also built before the timing); both sides
``torch.compile``d. Target 1.05x.

Usage: ``python benchmarks/bench_packed.py [--lengths 8192,32768] [--head-dims 64,128] [--e2e-rows 4]
[--no-e2e | --e2e-only]``; ``--smoke`` runs tiny shapes on the CPU (no timing, no results file): the three
attention implementations agree, and one train step of a tiny blockzoo model and of the plain peer runs.
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
from common import (bench, forward_backward_step, forward_step, peak_mb, print_table, row,  # noqa: E402
                    write_results)

import blockzoo  # noqa: E402
from bench_e2e import PlainGPT  # noqa: E402
from blockzoo import ops  # noqa: E402
from blockzoo.ops.attention.dispatch import plan_for  # noqa: E402

H, MEAN_DOC, SIGMA = 16, 512, 1.0
TARGETS = {"flex": 1.3, "sdpa_bool": 3.0}
E2E_TARGET, E2E_LEN = 1.05, 8192


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
            for mode, wrap in (("fwd", forward_step), ("fwd+bwd", forward_backward_step)):
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


# ----------------------------------------------------------------------- end to end: gpt_small train step
class PackedPlainGPT(PlainGPT):
    """``bench_e2e``'s plain GPT-2 on packed rows: positions restart at each document (``batch['positions']``)
    and attention is ``flex_attention`` with the batch's document block mask (``batch['block_mask']``), or
    SDPA with a dense ``batch['keep']`` mask (the CPU smoke, where flex has no backward)."""

    def loss(self, batch: dict) -> torch.Tensor:
        x = self.wte(batch["tokens"]) + self.wpe(batch["positions"])
        for b in self.blocks:
            x = b(x, batch.get("keep"), batch.get("block_mask"))
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=-100)


def packed_rows(rows: int, L: int, vocab: int, device: str, seed: int = 0, mean: float = MEAN_DOC) -> dict:
    """``rows`` packed rows of ``L`` tokens, each with its own log-normal documents: tokens, doc_ids and targets
    (the next token of the same document; -100 after each document's last token)."""
    ids = torch.cat([ops.doc_ids_from_cu_seqlens(torch.tensor([0, *doc_lengths(L, seed + r, mean)]).cumsum(0), L)
                     for r in range(rows)]).to(device)
    tokens = torch.randint(0, vocab, (rows, L), generator=torch.Generator().manual_seed(seed)).to(device)
    last = torch.ones_like(ids, dtype=torch.bool)
    last[:, :-1] = ids[:, 1:] != ids[:, :-1]
    return {"tokens": tokens, "targets": tokens.roll(-1, 1).masked_fill(last, -100), "doc_ids": ids}


def flex_document_mask(ids: torch.Tensor):
    """flex_attention's block mask of the causal document mask of ``ids`` (B, L), one layout per row."""
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(b, h, q_idx, kv_idx):
        return (ids[b, q_idx] == ids[b, kv_idx]) & (q_idx >= kv_idx)

    return create_block_mask(document_causal, ids.shape[0], None, ids.shape[1], ids.shape[1], device=ids.device)


def e2e_models(L: int, device: str, overrides: list[str] = ()) -> tuple[torch.nn.Module, PackedPlainGPT]:
    """(blockzoo gpt_small from YAML with context ``L``, the plain peer of the same shape)."""
    cfg = blockzoo.compose(["model=gpt_small", "~task", f"model.max_seq_len={L}", *overrides])
    m = cfg.model
    ours = blockzoo.build_model(cfg).to(device)
    plain = PackedPlainGPT(vocab=m.vocab_size, ctx=L, d=m.dim_model, layers=m.num_layers, heads=m.num_heads)
    return ours, plain.to(device)


def e2e_batches(batch: dict, flex_mask: bool = True) -> tuple[dict, dict]:
    """(blockzoo's batch, the plain peer's batch), each with its mask structure built here, once per batch:
    ours an ``ops.DocumentMask`` with its causal block mask, the peer flex's block mask (or, without
    ``flex_mask``, the dense keep mask) and the in-document positions."""
    ids = batch["doc_ids"]
    documents, positions = ops.packed_documents(ids, None, ids.shape[1])
    documents.block_mask(True)  # what every layer's attention asks for
    ours = {"tokens": batch["tokens"], "targets": batch["targets"], "doc_ids": documents}
    plain = {"tokens": batch["tokens"], "targets": batch["targets"], "positions": positions}
    if flex_mask:
        plain["block_mask"] = flex_document_mask(ids)
    else:
        plain["keep"] = ops.document_mask(ids)
    return ours, plain


def run_e2e(rows_per_batch: int, steps: int, L: int = E2E_LEN) -> list[dict]:
    """The packed gpt_small train step, both sides compiled: one result row."""
    from bench_e2e import graph_breaks, measure

    torch.manual_seed(0)
    batch = packed_rows(rows_per_batch, L, 50304, "cuda")
    ours, plain = e2e_models(L, "cuda")
    ours_batch, plain_batch = e2e_batches(batch)
    n_docs = int((batch["doc_ids"][:, -1] + 1).sum())
    print(f"e2e: gpt_small, {rows_per_batch} packed rows of {L} tokens, {n_docs} documents", flush=True)
    heads, d = ours.cfg.num_heads, ours.cfg.dim_model
    q = torch.randn(rows_per_batch, heads, L, d // heads, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    print(ops.explain(q, q, q, ours_batch["doc_ids"].block_mask(True), causal=True), flush=True)
    plain_s, plain_gib = measure(plain, torch.compile(plain.loss), plain_batch, steps)
    try:
        print(f"e2e: blockzoo graph breaks under torch.compile: {graph_breaks(ours.loss, ours_batch)}", flush=True)
    except Exception as e:  # the count is informative only
        print(f"e2e: graph-break count unavailable ({type(e).__name__}: {str(e)[:120]})")
    ours_s, ours_gib = measure(ours, torch.compile(ours.loss), ours_batch, steps)
    tokens = rows_per_batch * L
    r = row(f"gpt_small packed train step B={rows_per_batch} L={L} (blockzoo compiled)", "plain flex compiled",
            plain_s * 1e3, ours_s * 1e3, target=E2E_TARGET)
    r.update(peer_peak_GiB=round(plain_gib, 2), ours_peak_GiB=round(ours_gib, 2),
             ours_tokens_per_s=round(tokens / ours_s), peer_tokens_per_s=round(tokens / plain_s))
    print(f"e2e: plain flex compiled {plain_s * 1e3:.2f} ms ({plain_gib:.2f} GiB), blockzoo compiled "
          f"{ours_s * 1e3:.2f} ms ({ours_gib:.2f} GiB): ratio {r['ratio']:.3f} (target {E2E_TARGET}x) "
          f"{'MET' if r['met'] else 'not met'}", flush=True)
    return [r]


def run_e2e_smoke() -> bool:
    """A tiny gpt_small-shaped model on the CPU, eager float32, one train step each side (no timing): the
    prebuilt DocumentMask gives blockzoo the loss raw doc_ids give, the peer's flex mask_mod the loss of its
    dense mask (forward, where flex runs on this CPU), and both steps give finite losses and gradients."""
    L, tiny = 256, ["model.dim_model=64", "model.num_layers=2", "model.num_heads=2", "model.vocab_size=256"]
    torch.manual_seed(0)
    batch = packed_rows(2, L, 256, "cpu", mean=24)
    ours, plain = e2e_models(L, "cpu", tiny)
    ours_batch, plain_batch = e2e_batches(batch, flex_mask=False)
    ok = True
    with torch.no_grad():
        same = torch.allclose(ours.loss(ours_batch), ours.loss(batch), rtol=1e-6, atol=1e-6)
        print(f"e2e smoke: blockzoo with a prebuilt DocumentMask == with doc_ids: {same}")
        ok &= same
        try:
            flexed = plain.loss({**plain_batch, "keep": None, "block_mask": flex_document_mask(batch["doc_ids"])})
            agree = torch.allclose(flexed, plain.loss(plain_batch), rtol=1e-5, atol=1e-5)
            print(f"e2e smoke: plain flex document mask_mod == its dense mask: {agree}")
            ok &= agree
        except Exception as e:  # flex_attention may not run eagerly on this CPU build
            print(f"e2e smoke: flex_attention skipped on the CPU ({type(e).__name__}: {str(e)[:120]})")
    for name, model, b in (("blockzoo", ours, ours_batch), ("plain", plain, plain_batch)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss = model.loss(b)
        loss.backward()
        finite = bool(torch.isfinite(loss)) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                                    if p.grad is not None)
        opt.step()
        print(f"e2e smoke: {name} train step loss {loss.item():.4f}, finite: {finite}")
        ok &= finite
    return ok


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
    ok &= run_e2e_smoke()
    print("smoke: ok" if ok else "smoke: FAILED")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, no timing")
    parser.add_argument("--lengths", default="8192,32768", help="row lengths L (comma-separated)")
    parser.add_argument("--head-dims", default="64,128", help="head dims D (comma-separated)")
    parser.add_argument("--e2e-rows", type=int, default=4, help="packed rows of 8192 tokens per e2e train step")
    parser.add_argument("--e2e-steps", type=int, default=10, help="timed e2e train steps (median)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-e2e", action="store_true", help="attention rows only")
    group.add_argument("--e2e-only", action="store_true", help="the end-to-end train step row only")
    args = parser.parse_args()
    if args.smoke:
        return 0 if run_smoke() else 1
    if not torch.cuda.is_available():
        print("bench_packed.py needs a CUDA GPU (use --smoke on the CPU)", file=sys.stderr)
        return 1
    rows = [] if args.e2e_only else run_gpu([int(x) for x in args.lengths.split(",")],
                                            [int(x) for x in args.head_dims.split(",")])
    if not args.no_e2e:
        torch.cuda.empty_cache()
        try:
            rows += run_e2e(args.e2e_rows, args.e2e_steps)
        except Exception:  # the attention rows above must still be written
            import traceback

            traceback.print_exc()
    print_table(rows)
    print(f"wrote {write_results('packed', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
