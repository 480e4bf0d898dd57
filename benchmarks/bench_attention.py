"""Benchmark of ``blockzoo.ops.masked_attention`` (suite "attention") on the GPU.

1. Every attention row of TARGETS.md (B=4, H=16, L=4096, D=64, bf16), forward and forward+backward:
   ours against SDPA (flash, or with the bool mask) and compiled flex_attention, in the same run.
2. Time against density (0.5%-50%) for random, block-random and local masks, with a plot.
3. Time and peak memory against L (1k-32k) at a fixed density, with a plot (up to L = 2k also every
   path forced: there host time decides, and the rows check the plan's crossover).
4. Each path's floor (its smallest call: host time decides it) against SDPA on the same inputs.
5. A refit of the "cuda" cost table (``blockzoo/ops/attention/costs/cuda.json``) from forced-path runs,
   printed and saved as ``results/<date>-<device>-attention-costs.json`` in the shipped file's format
   (usable at once through ``BLOCKZOO_ATTENTION_COSTS``, or copied over ``costs/cuda.json``).
Each case's path is printed in its name: ``random 1% fwd [csr]``. Every mask is first checked
against SDPA (``check:`` lines). Usage: ``python benchmarks/bench_attention.py [--skip sweep,length,fit]``.
"""
from __future__ import annotations

import argparse
import datetime
import json
from typing import Callable

import torch
import torch.nn.functional as F
from common import (RESULTS, bench, device_slug, forward_backward_step, forward_step, peak_mb, print_table, row,
                    write_results)

import blockzoo
from blockzoo.ops import torch_ref
from blockzoo.ops.attention import cost, explain, masked_attention
from blockzoo.ops.attention.dispatch import plan_for
from blockzoo.ops.block_mask import block_mask

DEV, BF16 = "cuda", torch.bfloat16
B, H, L, D = 4, 16, 4096, 64
OP = "masked_attention"

# ------------------------------------------------------------------------------------------ masks


def random_mask(n: int, density: float) -> torch.Tensor:
    return torch.rand(n, n, device=DEV) < density


def block_random_mask(n: int, density: float, block: int = 128) -> torch.Tensor:
    nb = -(-n // block)
    layout = torch.rand(nb, nb, device=DEV) < density
    return layout.repeat_interleave(block, 0).repeat_interleave(block, 1)[:n, :n]


def local_mask(n: int, density: float) -> torch.Tensor:
    i = torch.arange(n, device=DEV)
    return (i[:, None] - i[None, :]).abs() <= density * n / 2


KINDS = {"random": random_mask, "block": block_random_mask, "local": local_mask}

# ------------------------------------------------------------------------------------------ peers
_FLEX: dict[str, Callable] = {}
_MASK: list[torch.Tensor] = []  # the tensor the flex mask_mod reads (swapped, never recompiled)
_WINDOW: list[torch.Tensor] = []


def _lookup_mod(b, h, q, kv):
    return _MASK[0][q, kv]


def _window_mod(b, h, q, kv):
    return (q - kv).abs() <= _WINDOW[0]


def flex_fn(kind: str, mask: torch.Tensor, density: float) -> Callable:
    """Compiled flex_attention with a block mask for ``mask`` (one compile per mask kind)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "flex" not in _FLEX:
        _FLEX["flex"] = torch.compile(flex_attention)
    n = mask.shape[-1]
    if kind == "local":
        _WINDOW[:] = [torch.tensor(int(density * n / 2), device=DEV)]
        mod = _window_mod
    else:
        _MASK[:] = [mask]
        mod = _lookup_mod
    bm = create_block_mask(mod, None, None, n, n, device=DEV)
    flex = _FLEX["flex"]
    return lambda q, k, v: flex(q, k, v, block_mask=bm)


def sdpa_bool(mask: torch.Tensor) -> Callable:
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sdpa_bool_zeroed(mask: torch.Tensor) -> Callable:
    """SDPA with the bool mask and its fully masked rows zeroed (SDPA alone gives NaN there): the
    cheapest correct dense answer for such a mask, its fix-up built once as for a static mask."""
    kept = mask.any(-1, keepdim=True)
    safe = mask | ~kept
    return lambda q, k, v: torch.where(kept, F.scaled_dot_product_attention(q, k, v, attn_mask=safe), 0.0)


def ours(mask: torch.Tensor | None, causal: bool = False, path: str | None = None) -> Callable:
    return lambda q, k, v: masked_attention(q, k, v, mask, causal=causal, path=path)


# --------------------------------------------------------------------------------------- helpers
def inputs(b: int, h: int, n: int, grad: bool) -> list[torch.Tensor]:
    return [torch.randn(b, h, n, D, device=DEV, dtype=BF16, requires_grad=grad) for _ in range(3)]


def timed(step: Callable[[], object]) -> float:
    step()  # analysis, autotuning, compilation
    torch.cuda.synchronize()
    return bench(step)


def path_of(mask: torch.Tensor | None, qkv: list[torch.Tensor], causal: bool = False) -> str:
    if mask is None:
        return "flash"
    return plan_for(*qkv, mask, causal).path


def check(name: str, mask: torch.Tensor | None, causal: bool = False) -> None:
    """Our output and gradients against the float32 reference (B=1, H=2: the scores fit in memory)."""
    q, k, v = inputs(1, 2, L, True)
    out = masked_attention(q, k, v, mask, causal=causal)
    out.backward(torch.ones_like(out))
    r = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = torch_ref.attention(*r, mask=mask, causal=causal)
    ref.backward(torch.ones_like(ref))
    errs = [(a.float() - b).norm().item() / b.norm().clamp_min(1e-30).item()
            for a, b in ((out, ref), (q.grad, r[0].grad), (k.grad, r[1].grad), (v.grad, r[2].grad))]
    print(f"check: {name} [{blockzoo.ops.last_path(OP)}]: rel err out {errs[0]:.1e}, dq {errs[1]:.1e}, "
          f"dk {errs[2]:.1e}, dv {errs[3]:.1e}{'  <-- FAIL' if max(errs) > 3e-2 else ''}", flush=True)


# ----------------------------------------------------------------------------- 1. TARGETS rows
TARGET_ROWS = [
    # (kind, density, {peer: (target fwd, target fwd+bwd)})
    ("random", 0.30, {"sdpa_bool": (1.0, 1.0), "flex": (1.0, 1.0)}),
    ("random", 0.10, {"sdpa_bool": (1.0, 1.0), "flex": (1.0, 1.0)}),
    ("random", 0.03, {"sdpa_bool": (2.0, None), "flex": (None, None)}),
    ("random", 0.01, {"sdpa_bool": (4.0, 4.0), "flex": (None, None)}),
    ("block", 0.32, {"flex": (1.25, 1.25), "sdpa_bool": (None, None)}),
    ("block", 0.11, {"flex": (1.25, 1.25), "sdpa_bool": (None, None)}),
    ("block", 0.03, {"flex": (1.0, 1.0), "sdpa_bool": (None, None)}),
    ("block", 0.01, {"flex": (1.0, 1.0), "sdpa_bool": (None, None)}),
    ("local", 0.28, {"flex": (1.3, 1.3), "sdpa_bool": (None, None)}),
    ("local", 0.10, {"flex": (1.3, 1.3), "sdpa_bool": (None, None)}),
    ("local", 0.03, {"flex": (1.3, 1.3), "sdpa_bool": (None, None)}),
    ("local", 0.01, {"flex": (1.3, 1.3), "sdpa_bool": (None, None)}),
]


def bench_targets(rows: list[dict]) -> None:
    for causal in (False, True):
        name = "causal" if causal else "none"
        check(name, None, causal)
        for mode, wrap in (("fwd", forward_step), ("fwd+bwd", forward_backward_step)):
            qkv = inputs(B, H, L, mode != "fwd")
            peer = timed(wrap(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal), qkv))
            mine = timed(wrap(ours(None, causal), qkv))
            rows.append(row(f"{name} {mode} [{path_of(None, qkv)}]", "sdpa_flash", peer, mine, target=0.98))
    for kind, density, peers in TARGET_ROWS:
        mask = KINDS[kind](L, density)
        label = f"{kind} {100 * density:g}%"
        check(label, mask)
        print(explain(*inputs(B, H, L, False), mask), flush=True)
        for i, (mode, wrap) in enumerate((("fwd", forward_step), ("fwd+bwd", forward_backward_step))):
            qkv = inputs(B, H, L, mode != "fwd")
            mine = timed(wrap(ours(mask), qkv))
            path = path_of(mask, qkv)
            times = {"sdpa_bool": timed(wrap(sdpa_bool(mask), qkv)),
                     "flex": timed(wrap(flex_fn(kind, mask, density), qkv))}
            for peer, targets in peers.items():
                rows.append(row(f"{label} {mode} [{path}]", peer, times[peer], mine, target=targets[i]))
        print_table(rows[-4:])


# ---------------------------------------------------------------------------- 2. density sweep
DENSITIES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def bench_density(rows: list[dict]) -> dict:
    curves: dict = {}
    qkv = inputs(B, H, L, False)
    for kind, make in KINDS.items():
        for density in DENSITIES:
            mask = make(L, density)
            t = {"ours": timed(forward_step(ours(mask), qkv)),
                 "sdpa_bool": timed(forward_step(sdpa_bool(mask), qkv)),
                 "flex": timed(forward_step(flex_fn(kind, mask, density), qkv))}
            path = path_of(mask, qkv)
            for peer in ("sdpa_bool", "flex"):
                rows.append(row(f"sweep {kind} {100 * density:g}% fwd [{path}]", peer, t[peer], t["ours"]))
            curves.setdefault(kind, []).append((density, t, path))
            print(f"sweep {kind} {100 * density:g}%: {path} {t}", flush=True)
    return curves


# ----------------------------------------------------------------------------- 3. length sweep
LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
SHORT = 2048  # up to this length the length sweep also times each path forced
LENGTH_KINDS = (("random", 0.01), ("block", 0.03))


def bench_length(rows: list[dict]) -> dict:
    curves: dict = {}
    for kind, density in LENGTH_KINDS:
        for n in LENGTHS:
            mask = KINDS[kind](n, density)
            qkv = inputs(1, H, n, False)
            mine, peer = forward_step(ours(mask), qkv), forward_step(sdpa_bool(mask), qkv)
            t_ours, t_peer = timed(mine), timed(peer)
            m_ours, m_peer = peak_mb(mine), peak_mb(peer)
            path = path_of(mask, qkv)
            rows.append(row(f"length {kind} {100 * density:g}% L={n} fwd [{path}]", "sdpa_bool", t_peer, t_ours))
            if not bool(mask.any(-1).all()):  # empty rows: SDPA alone is not a correct answer, time the one that is
                rows.append(row(f"length {kind} {100 * density:g}% L={n} fwd [{path}]", "sdpa_bool, empty rows zeroed",
                                timed(forward_step(sdpa_bool_zeroed(mask), qkv)), t_ours))
            if n <= SHORT:  # where host time decides: every path forced, to check the plan's crossover
                for forced in cost.PATHS[1:]:
                    rows.append(row(f"length {kind} {100 * density:g}% L={n} fwd [{forced} forced]", "sdpa_bool",
                                    t_peer, timed(forward_step(ours(mask, path=forced), qkv))))
            curves.setdefault(kind, []).append((n, t_ours, t_peer, m_ours, m_peer, path))
            print(f"length {kind} L={n}: {path} ours {t_ours:.3f} ms {m_ours:.0f} MiB, sdpa_bool {t_peer:.3f} ms "
                  f"{m_peer:.0f} MiB", flush=True)
            del mask, qkv
            torch.cuda.empty_cache()
    return curves


# ----------------------------------------------------------------------------------- 4. floors
# path -> (L, heads, mask maker or None): the smallest call each path is picked for (B = 1). Its time is
# the path's floor in the cost table: host time decides it (block_sparse / csr at L = 1024 do little GPU work)
FLOOR_CASES: dict[str, tuple[int, int, Callable[[int], torch.Tensor] | None]] = {
    "flash": (128, 1, None),
    "dense": (128, 1, lambda n: random_mask(n, 0.3)),
    "block_sparse": (1024, H, lambda n: block_random_mask(n, 0.03)),
    "csr": (1024, H, lambda n: random_mask(n, 0.01)),
}


def _floor_calls() -> dict[str, tuple[str, Callable, Callable, list[torch.Tensor]]]:
    """path -> (case label, our call forced to the path, the SDPA peer on the same inputs, inputs)."""
    calls = {}
    for path, (n, heads, make) in FLOOR_CASES.items():
        mask = make(n) if make is not None else None
        peer = (lambda q, k, v: F.scaled_dot_product_attention(q, k, v)) if mask is None else sdpa_bool(mask)
        mine = ours(None) if mask is None else ours(mask, path=path)
        label = f"floor L={n} H={heads} fwd [{path}{'' if mask is None else ' forced'}]"
        calls[path] = (label, mine, peer, inputs(1, heads, n, False))
    return calls


def floor_times() -> dict[str, float]:
    """Each path's floor: its time on the smallest call it is picked for (``FLOOR_CASES``)."""
    return {path: timed(forward_step(mine, qkv)) for path, (_, mine, _, qkv) in _floor_calls().items()}


def bench_floors(rows: list[dict]) -> None:
    """The floors against SDPA on the same inputs (what our host time adds to a small call)."""
    for path, (label, mine, peer, qkv) in _floor_calls().items():
        rows.append(row(label, "sdpa_flash" if path == "flash" else "sdpa_bool", timed(forward_step(peer, qkv)),
                        timed(forward_step(mine, qkv))))
    print_table(rows[-len(FLOOR_CASES):])


# -------------------------------------------------------------------------------- 5. cost refit
def _lsq(xs: list[list[float]], ys: list[float]) -> list[float]:
    """Least squares (float64), each coefficient clamped at 0."""
    a = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)
    sol = torch.linalg.lstsq(a, y[:, None]).solution[:, 0]
    return [max(0.0, float(v)) for v in sol]


def fit_costs() -> dict:
    """Refit the "cuda" table from forced-path timings (forward; fwd+bwd factors per path, and per
    block-sparse tile)."""
    table = json.loads(json.dumps(cost.cost_table("cuda")))
    table["source"] = f"refit by bench_attention.py on {torch.cuda.get_device_name()} {datetime.date.today()}"
    work = B * H
    qkv, qkv_g = inputs(B, H, L, False), inputs(B, H, L, True)
    flops = 4.0 * work * L * L * D
    flash = timed(forward_step(ours(None), qkv))
    table["flash"]["tflops"] = flops / (flash * 1e9)
    table["flash"]["causal_tflops"] = 0.5 * flops / (timed(forward_step(ours(None, True), qkv)) * 1e9)
    table["flash"]["fwd_bwd"] = timed(forward_backward_step(ours(None), qkv_g)) / flash
    dense_t, dense_x = [], []
    for n, bh in ((L // 4, 1), (L // 4, work), (L // 2, 1), (L // 2, work), (L, work)):  # small calls too:
        mask, qn = random_mask(n, 0.3), inputs(1, bh, n, False)  # their fixed cost decides short sequences
        dense_t.append(timed(forward_step(ours(mask, path="dense"), qn)))
        dense_x.append([1.0, 4.0 * bh * n * n * D / 1e9])
    ov, inv_rate = _lsq([[x[0] / t, x[1] / t] for x, t in zip(dense_x, dense_t)], [1.0] * len(dense_t))  # relative
    table["dense"].update(overhead_ms=ov, tflops=1.0 / max(inv_rate, 1e-9))
    table["dense"]["fwd_bwd"] = timed(forward_backward_step(ours(mask, path="dense"), qkv_g)) / dense_t[-1]
    # block-sparse: per tile, t = c + full * f + partial * p; then c = overhead + row blocks * r over the tiles
    masks = [block_random_mask(L, 0.05), block_random_mask(L, 0.3), local_mask(L, 0.03), local_mask(L, 0.2),
             random_mask(L, 0.2)]
    intercepts = []
    for bm_, bn_ in cost.candidate_tiles("cuda"):
        xs, ys = [], []
        for mask in masks:
            bmask = block_mask(mask, block_size=(bm_, bn_))
            ys.append(timed(forward_step(ours(bmask, path="block_sparse"), qkv)))
            xs.append([1.0, bmask.full_tiles * work * 1e-6, bmask.partial_tiles * work * 1e-6])
        c, full_ns, partial_ns = _lsq(xs, ys)
        factors = []  # the backward's cost relative to the forward differs per tile: one block and one band mask
        for mask in (masks[1], masks[3]):
            forced = ours(block_mask(mask, block_size=(bm_, bn_)), path="block_sparse")
            factors.append(timed(forward_backward_step(forced, qkv_g)) / timed(forward_step(forced, qkv)))
        table["block_sparse"]["tiles"][f"{bm_}x{bn_}"] = {"full_ns": full_ns, "partial_ns": partial_ns,
                                                          "fwd_bwd": sum(factors) / len(factors)}
        intercepts.append(([1.0, work * bmask.n_row_blocks * 1e-6], c))
    ov, row_ns = _lsq([x for x, _ in intercepts], [c for _, c in intercepts])
    table["block_sparse"]["overhead_ms"], table["block_sparse"]["row_block_ns"] = ov, row_ns
    bmask = block_mask(masks[1], block_size=cost.candidate_tiles("cuda")[0])
    forced = ours(bmask, path="block_sparse")
    table["block_sparse"]["fwd_bwd"] = timed(forward_backward_step(forced, qkv_g)) / timed(forward_step(forced, qkv))
    for path, ms in floor_times().items():
        table[path]["floor_ms"] = ms
    # csr: t = overhead + pairs * pair_ns + rows * row_ns (two lengths, so rows vary)
    xs, ys = [], []
    for n, density in ((L, 0.002), (L, 0.005), (L, 0.01), (L, 0.02), (L, 0.05), (L // 2, 0.01), (L // 2, 0.05)):
        mask, qn = random_mask(n, density), inputs(B, H, n, False)
        nnz = int(mask.sum())
        ys.append(timed(forward_step(ours(mask, path="csr"), qn)))
        xs.append([1.0, work * nnz * 1e-6, work * n * 1e-6])
    ov, pair_ns, row_ns = _lsq(xs, ys)
    table["csr"].update(overhead_ms=ov, pair_ns=pair_ns, row_ns=row_ns)
    mask = random_mask(L, 0.01)
    csr = ours(mask, path="csr")
    table["csr"]["fwd_bwd"] = timed(forward_backward_step(csr, qkv_g)) / timed(forward_step(csr, qkv))
    return table


# ------------------------------------------------------------------------------------------ plots
def plot(density_curves: dict, length_curves: dict, stem: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots")
        return
    if density_curves:
        fig, axes = plt.subplots(1, len(density_curves), figsize=(5 * len(density_curves), 4), squeeze=False)
        for ax, (kind, pts) in zip(axes[0], density_curves.items()):
            xs = [100 * p[0] for p in pts]
            for peer in ("ours", "sdpa_bool", "flex"):
                ax.plot(xs, [p[1][peer] for p in pts], marker="o", label=peer)
            for x, p in zip(xs, pts):
                ax.annotate(p[2], (x, p[1]["ours"]), fontsize=7, rotation=30)
            ax.set(xscale="log", yscale="log", xlabel="density %", ylabel="ms (fwd)", title=f"{kind} mask, L={L}")
            ax.legend()
        fig.tight_layout()
        fig.savefig(f"{stem}-density.png", dpi=120)
    if length_curves:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for kind, pts in length_curves.items():
            ns = [p[0] for p in pts]
            axes[0].plot(ns, [p[1] for p in pts], marker="o", label=f"ours {kind}")
            axes[0].plot(ns, [p[2] for p in pts], marker="x", ls="--", label=f"sdpa_bool {kind}")
            axes[1].plot(ns, [p[3] for p in pts], marker="o", label=f"ours {kind}")
            axes[1].plot(ns, [p[4] for p in pts], marker="x", ls="--", label=f"sdpa_bool {kind}")
        for ax, lab in zip(axes, ("ms (fwd)", "peak MiB (fwd)")):
            ax.set(xscale="log", yscale="log", xlabel="L", ylabel=lab)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(f"{stem}-length.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="masked_attention against SDPA and flex_attention on a CUDA GPU; writes "
                    "results/<date>-<device>-attention-{targets,density,length-floors}.json, their plots "
                    "and (section fit) a refitted cost table, <date>-<device>-attention-costs.json.")
    parser.add_argument("--skip", default="", help="comma-separated: targets, sweep, length, floors, fit")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    skip = set(filter(None, args.skip.split(",")))
    torch.manual_seed(0)
    torch._dynamo.config.cache_size_limit = 64
    # one results file per suite, named by what it holds; sections skipped leave their file alone
    suites = {"attention-targets": {"targets": bench_targets}, "attention-density": {"sweep": bench_density},
              "attention-length-floors": {"length": bench_length, "floors": bench_floors}}
    curves: dict[str, dict] = {}
    every_row: list[dict] = []
    for suite, sections in suites.items():
        rows: list[dict] = []
        for name, section in sections.items():
            if name not in skip:
                curves[name] = section(rows) or {}
        if rows:
            print(f"wrote {write_results(suite, rows)}")
            every_row += rows
    print_table(every_row)
    plot(curves.get("sweep", {}), curves.get("length", {}),
         str(RESULTS / f"{datetime.date.today().isoformat()}-{device_slug()}-attention"))
    if "fit" not in skip:
        table = fit_costs()
        text = json.dumps({"cuda": table}, indent=1)
        print("fitted cost table (copy over blockzoo/ops/attention/costs/cuda.json or set BLOCKZOO_ATTENTION_COSTS):")
        print(text)
        out = RESULTS / f"{datetime.date.today().isoformat()}-{device_slug()}-attention-costs.json"
        out.write_text(text + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
