"""Benchmark of the Triton softmax / layer_norm / rms_norm (suite "triton-norm-softmax").

Times every "Triton parts" row of TARGETS.md for softmax, log_softmax, masked and causal softmax,
layer_norm and rms_norm against torch eager, torch.compile and Liger (when importable), forward and
forward+backward; sweeps the row length N from 128 to 131072 (2^26 elements per size), plots
bandwidth against N and keeps those rows in a separate "-sweep" results file; checks that the ops
run under torch.compile(fullgraph=True).
Usage on a GPU: ``python benchmarks/bench_triton_norm_softmax.py [--only softmax,norms,sweep,compile,tune]``
("tune" is not in the default run: it prints TB/s of the main shapes under alternative block sizes).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from typing import Callable

import torch
import torch.nn.functional as F
from common import RESULTS, bench, device_slug, measure_copy_ceiling, print_table, row, run_sections, tbps, write_results

import blockzoo

FP16, BF16, DEVICE = torch.float16, torch.bfloat16, "cuda"
SUITE = "triton-norm-softmax"
SWEEP_ELEMENTS = 1 << 26
Fn = Callable[..., object]


def compiled(fn: Fn) -> Fn:
    """torch.compile with static shapes (each peer compiled once per shape)."""
    return torch.compile(fn, dynamic=False)


def liger_ops() -> dict[str, Fn]:
    """Liger's softmax / layer_norm / rms_norm, those that import here (none without liger-kernel)."""
    ops: dict[str, Fn] = {}
    try:
        from liger_kernel.ops.softmax import LigerSoftmaxFunction
        ops["softmax"] = LigerSoftmaxFunction.apply
    except Exception as e:  # optional peer; its module layout changes between releases
        print(f"liger softmax unavailable: {type(e).__name__}: {e}")
    try:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
        ops["layer_norm"] = lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, 1e-5)
    except Exception as e:
        print(f"liger layer_norm unavailable: {type(e).__name__}: {e}")
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        ops["rms_norm"] = lambda x, w: LigerRMSNormFunction.apply(x, w, 1e-6, 0.0, "llama", True)
    except Exception as e:
        print(f"liger rms_norm unavailable: {type(e).__name__}: {e}")
    return ops


def softmax_ours(**kw) -> Fn:
    return lambda x, mask=None: blockzoo.ops.softmax(x, mask=mask, **kw)


def layer_norm_ours(x, w, b):
    return blockzoo.ops.layer_norm(x, x.shape[-1:], w, b, 1e-5)


def rms_norm_ours(x, w):
    return blockzoo.ops.rms_norm(x, x.shape[-1:], w, 1e-6)


def step(fn: Fn, inputs: list[torch.Tensor], dy: torch.Tensor) -> Callable[[], object]:
    """Forward + backward of ``fn(*inputs)``; gradients are returned, never accumulated."""
    return lambda: torch.autograd.grad(fn(*inputs), inputs, dy)


def timed_case(rows: list[dict], case: str, op: str, mine: Callable[[], object], peers: dict[str, Callable[[], object]],
               nbytes: float, targets: dict[str, float], ceiling_target: float | None = None) -> float:
    """Time ours and each peer: one row per peer, plus a 'copy ceiling' row when a fraction is asked."""
    mine()
    torch.cuda.synchronize()
    assert blockzoo.ops.last_path(op) == "triton", f"{case}: {op} took the {blockzoo.ops.last_path(op)} path"
    ours_ms = bench(mine)
    for peer, fn in peers.items():
        try:
            fn()
            rows.append(row(case, peer, bench(fn), ours_ms, bytes_moved=nbytes, target=targets.get(peer)))
        except Exception as e:  # a peer that cannot run a case (too wide, OOM) is reported, not fatal
            print(f"{case}: peer {peer} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if ceiling_target is not None:
        ideal_ms = nbytes / (measure_copy_ceiling() * 1e12) * 1e3
        rows.append(row(case, "copy ceiling", ideal_ms, ours_ms, bytes_moved=nbytes, target=ceiling_target,
                        target_is_ceiling_frac=True))
    print(f"{case}: ours {ours_ms:.4f} ms, {tbps(nbytes, ours_ms):.2f} TB/s", flush=True)
    return ours_ms


def compiled_ours(rows: list[dict], case: str, mine: Callable[[], object], peers: dict[str, Callable[[], object]],
                  nbytes: float, targets: dict[str, float]) -> None:
    """The same case with our op inside a torch.compile graph (its kernels launched by Inductor's wrapper,
    no Python per op): what a compiled model sees. The backend is forced, so a fallback would raise."""
    mine()
    ours_ms = bench(mine)
    for peer, fn in peers.items():
        rows.append(row(case + ", ours under torch.compile", peer, bench(fn), ours_ms, bytes_moved=nbytes,
                        target=targets.get(peer)))
    print(f"{case}, ours under torch.compile: {ours_ms:.4f} ms", flush=True)


def bench_softmax(rows: list[dict], liger: dict[str, Fn]) -> None:
    eager = lambda x: torch.softmax(x, -1)  # noqa: E731
    ours = softmax_ours()
    cases = [((16384, 4096), {"liger": 1.07}, 0.95), ((65536, 1024), {"compile": 1.0}, 0.93),
             ((4194304, 256), {"compile": 0.95}, None), ((1024, 65536), {"liger": 1.5}, 0.8),
             ((256, 65536), {"liger": 1.3}, None)]
    for (m, n), targets, frac in cases:
        x = torch.randn(m, n, device=DEVICE, dtype=FP16)
        comp = compiled(eager)
        peers = {"eager": lambda: eager(x), "compile": lambda: comp(x)}
        if "softmax" in liger:
            peers["liger"] = lambda: liger["softmax"](x)
        timed_case(rows, f"softmax fwd fp16 {m}x{n}", "softmax", lambda: ours(x), peers, 4 * m * n, targets, frac)
        del x

    m, n = 16384, 4096
    x = torch.randn(m, n, device=DEVICE, dtype=FP16, requires_grad=True)
    dy = torch.randn(m, n, device=DEVICE, dtype=FP16)
    comp = compiled(eager)
    peers = {"eager": step(eager, [x], dy), "compile": step(comp, [x], dy)}
    if "softmax" in liger:
        peers["liger"] = step(liger["softmax"], [x], dy)
    timed_case(rows, f"softmax fwd+bwd fp16 {m}x{n}", "softmax", step(ours, [x], dy), peers, 10 * m * n,
               {"eager": 2.5})
    compiled_ours(rows, f"softmax fwd+bwd fp16 {m}x{n}", step(compiled(ours), [x], dy), peers, 10 * m * n,
                  {"eager": 2.5})

    xd = x.detach()
    keep = torch.rand(m, n, device=DEVICE) > 0.1
    masked = lambda x, k: x.masked_fill(~k, float("-inf")).softmax(-1)  # noqa: E731
    cmasked = compiled(masked)
    timed_case(rows, f"masked softmax bool mask fp16 {m}x{n}", "softmax", lambda: ours(xd, keep),
               {"compile": lambda: cmasked(xd, keep), "eager": lambda: masked(xd, keep)}, 5 * m * n,
               {"compile": 2.0})

    xc = xd.view(4, m // 4, n)
    ours_causal = softmax_ours(causal=True)
    upper = torch.ones(m // 4, n, dtype=torch.bool, device=DEVICE).triu(1)
    causal = lambda x: x.masked_fill(upper, float("-inf")).softmax(-1)  # noqa: E731
    ccausal = compiled(causal)
    case = f"causal softmax fp16 4x{m // 4}x{n}"
    ms = timed_case(rows, case, "softmax", lambda: ours_causal(xc), {"compile": lambda: ccausal(xc)}, 4 * m * n, {})
    rows.append(row(case, "ours plain softmax", bench(lambda: ours(xc)), ms, bytes_moved=4 * m * n, target=1.0))

    ours_log = softmax_ours(log=True)
    lsm = lambda x: torch.log_softmax(x, -1)  # noqa: E731
    clsm = compiled(lsm)
    timed_case(rows, f"log_softmax fwd fp16 {m}x{n}", "softmax", lambda: ours_log(xd),
               {"eager": lambda: lsm(xd), "compile": lambda: clsm(xd)}, 4 * m * n, {"compile": 2.0})


def norm_inputs(m: int, n: int, requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    x = torch.randn(m, n, device=DEVICE, dtype=BF16, requires_grad=requires_grad)
    w = (1 + 0.1 * torch.randn(n, device=DEVICE, dtype=BF16)).requires_grad_(requires_grad)
    b = (0.1 * torch.randn(n, device=DEVICE, dtype=BF16)).requires_grad_(requires_grad)
    return x, w, b


def bench_norms(rows: list[dict], liger: dict[str, Fn]) -> None:
    ln_eager = lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, 1e-5)  # noqa: E731
    rms_eager = lambda x, w: F.rms_norm(x, x.shape[-1:], w, 1e-6)  # noqa: E731
    specs = {"layer_norm": (ln_eager, layer_norm_ours, 3),
             "rms_norm": (rms_eager, rms_norm_ours, 2)}
    fwd_cases = [("layer_norm", (32768, 4096), {"liger": 1.07}, 0.95),
                 ("layer_norm", (4194304, 256), {"compile": 0.95}, None),
                 ("layer_norm", (1024, 65536), {}, 0.8), ("rms_norm", (32768, 4096), {"liger": 1.0}, None)]
    for op, (m, n), targets, frac in fwd_cases:
        eager, ours, nin = specs[op]
        args = norm_inputs(m, n)[:nin]
        comp = compiled(eager)
        peers = {"eager": lambda: eager(*args), "compile": lambda: comp(*args)}
        if op in liger:
            peers["liger"] = lambda: liger[op](*args)
        timed_case(rows, f"{op} fwd bf16 {m}x{n}", op, lambda: ours(*args), peers, 4 * m * n, targets, frac)
        del args
    for op, target in (("layer_norm", 1.5), ("rms_norm", 1.4)):
        m, n = 32768, 4096
        eager, ours, nin = specs[op]
        args = list(norm_inputs(m, n, requires_grad=True)[:nin])
        dy = torch.randn(m, n, device=DEVICE, dtype=BF16)
        comp = compiled(eager)
        peers = {"eager": step(eager, args, dy), "compile": step(comp, args, dy)}
        if op in liger:
            peers["liger"] = step(liger[op], args, dy)
        timed_case(rows, f"{op} fwd+bwd bf16 {m}x{n}", op, step(ours, args, dy), peers, 10 * m * n,
                   {"compile": target})
        compiled_ours(rows, f"{op} fwd+bwd bf16 {m}x{n}", step(compiled(ours), args, dy), peers, 10 * m * n,
                      {"compile": target})
        del args, dy


def bench_sweep(rows: list[dict], liger: dict[str, Fn]) -> None:
    """Bandwidth against N (rows = 2^26 / N) for softmax fp16 and layer_norm bf16; saves a plot."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {"softmax fp16": {}, "layer_norm bf16": {}}
    ln_eager = lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b, 1e-5)  # noqa: E731
    sm_eager = lambda x: torch.softmax(x, -1)  # noqa: E731
    ours_sm, ours_ln = softmax_ours(), layer_norm_ours
    for k in range(7, 18):
        n = 1 << k
        m = SWEEP_ELEMENTS // n
        x16 = torch.randn(m, n, device=DEVICE, dtype=FP16)
        lnargs = norm_inputs(m, n)
        sm_c, ln_c = compiled(sm_eager), compiled(ln_eager)
        impls = {"softmax fp16": {"ours": lambda: ours_sm(x16), "eager": lambda: sm_eager(x16),
                                  "compile": lambda: sm_c(x16)},
                 "layer_norm bf16": {"ours": lambda: ours_ln(*lnargs), "eager": lambda: ln_eager(*lnargs),
                                     "compile": lambda: ln_c(*lnargs)}}
        if "softmax" in liger:
            impls["softmax fp16"]["liger"] = lambda: liger["softmax"](x16)
        if "layer_norm" in liger:
            impls["layer_norm bf16"]["liger"] = lambda: liger["layer_norm"](*lnargs)
        for name, fns in impls.items():
            times = {}
            for impl, fn in fns.items():
                try:
                    fn()
                    times[impl] = bench(fn)
                except Exception as e:
                    print(f"sweep {name} N={n}: {impl} failed: {type(e).__name__}")
                    continue
                curves[name].setdefault(impl, []).append((n, tbps(4 * m * n, times[impl])))
            for impl in ("compile", "liger"):
                if impl in times and "ours" in times:
                    rows.append(row(f"sweep {name.split()[0]} fwd {name.split()[1]} {m}x{n}", impl, times[impl],
                                    times["ours"], bytes_moved=4 * m * n))
        del x16, lnargs
        torch.cuda.empty_cache()
    plot(curves)


def plot(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5))
    ceiling = measure_copy_ceiling()
    for ax, (name, impls) in zip(axes, curves.items()):
        for impl, pts in impls.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ax.axhline(ceiling, color="gray", linestyle="--", label=f"copy ceiling {ceiling:.2f} TB/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("row length N (rows = 2^26 / N)")
        ax.set_ylabel("TB/s (read + write)")
        ax.set_title(f"{name} forward, {torch.cuda.get_device_name()}")
        ax.legend()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{datetime.date.today().isoformat()}-{device_slug()}-{SUITE}-sweep.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def check_compile(rows: list[dict], liger: dict[str, Fn]) -> None:
    """The three ops under torch.compile(fullgraph=True), forward and backward, match eager ours."""
    x = torch.randn(8, 64, 257, device=DEVICE, dtype=BF16, requires_grad=True)
    w = torch.randn(257, device=DEVICE, dtype=BF16, requires_grad=True)
    b = torch.randn(257, device=DEVICE, dtype=BF16, requires_grad=True)
    mask = torch.rand(64, 257, device=DEVICE) > 0.2

    def f(x, w, b):
        h = blockzoo.ops.layer_norm(x, (257,), w, b) + blockzoo.ops.rms_norm(x, (257,), w)
        return (blockzoo.ops.softmax(h, mask=mask) * h).float().sum()

    fast = f
    ref = fast(x, w, b)
    ref_grads = torch.autograd.grad(ref, (x, w, b))
    out = torch.compile(f, fullgraph=True)(x, w, b)
    grads = torch.autograd.grad(out, (x, w, b))
    errs = [float((g.float() - r.float()).norm() / r.float().norm()) for g, r in zip(grads, ref_grads)]
    ok = abs(out.item() - ref.item()) <= 1e-2 * abs(ref.item()) + 1e-2 and max(errs) < 2e-2
    print(f"{'OK  ' if ok else 'FAIL'} torch.compile fullgraph: out {out.item():.4f} vs {ref.item():.4f}, "
          f"grad rel errors {errs}")
    if not ok:
        raise AssertionError("compiled ops disagree with eager")


def tune(rows: list[dict], liger: dict[str, Fn]) -> None:
    """Print TB/s of the main shapes under alternative block sizes (the knobs in ops/triton/rowwise.py)."""
    from blockzoo.ops.triton import rowwise

    knobs = ("ELEMS_PER_THREAD", "TILE", "MAX_FUSED_N", "SPLIT_CHUNK", "BWD_STAGES")
    defaults = {k: getattr(rowwise, k) for k in knobs}
    sm, ln = softmax_ours(), layer_norm_ours
    fused = [dict(ELEMS_PER_THREAD=e, TILE=t) for e in (8, 16, 32) for t in (2048, 4096, 8192)]
    bwd = [dict(ELEMS_PER_THREAD=e, BWD_STAGES=st) for e in (8, 16, 32) for st in (1, 2, 3)]
    split = [dict(MAX_FUSED_N=f, SPLIT_CHUNK=c) for f in (16384, 32768, 65536) for c in (4096, 8192, 16384)]
    cases = [("softmax fwd", (16384, 4096), fused), ("softmax fwd", (65536, 1024), fused),
             ("softmax fwd", (4194304, 256), fused), ("softmax fwd+bwd", (16384, 4096), fused),
             ("layer_norm fwd", (32768, 4096), fused), ("layer_norm fwd+bwd", (32768, 4096), bwd),
             ("softmax fwd", (1024, 65536), split), ("softmax fwd", (2048, 32768), split),
             ("layer_norm fwd", (1024, 65536), split), ("layer_norm fwd+bwd", (1024, 65536), split)]
    for name, (m, n), settings in cases:
        x, w, b = norm_inputs(m, n, requires_grad=name.endswith("bwd"))
        x16 = x.detach().half().requires_grad_(name.endswith("bwd"))
        fn = {"softmax fwd": lambda: sm(x16), "softmax fwd+bwd": step(sm, [x16], torch.randn_like(x16)),
              "layer_norm fwd": lambda: ln(x, w, b),
              "layer_norm fwd+bwd": step(ln, [x, w, b], torch.randn_like(x))}[name]
        nbytes = (10 if name.endswith("bwd") else 4) * m * n
        for setting in settings:
            for k, v in setting.items():
                setattr(rowwise, k, v)
            try:
                fn()
                print(f"tune {name} {m}x{n} {setting}: {tbps(nbytes, bench(fn)):.3f} TB/s", flush=True)
            except Exception as e:
                print(f"tune {name} {m}x{n} {setting}: failed: {type(e).__name__}: {e}")
        for k, v in defaults.items():
            setattr(rowwise, k, v)
        del x, w, b, x16
        torch.cuda.empty_cache()


SECTIONS = {"softmax": bench_softmax, "norms": bench_norms, "sweep": bench_sweep, "compile": check_compile,
            "tune": tune}
DEFAULT_SECTIONS = "softmax,norms,sweep,compile"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=DEFAULT_SECTIONS,
                        help=f"comma-separated sections of {', '.join(SECTIONS)} (default {DEFAULT_SECTIONS})")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_triton_norm_softmax.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    blockzoo.ops.set_backend("triton")  # a failure raises instead of timing the fallback; no per-call context
    for name in ("cache_size_limit", "recompile_limit"):  # one compiled peer per shape: no eager fallback
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    print(f"copy ceiling: {measure_copy_ceiling():.2f} TB/s")
    liger = liger_ops()
    rows: list[dict] = []
    sweep_rows: list[dict] = []
    sections = {name: lambda fn=fn, name=name: fn(sweep_rows if name == "sweep" else rows, liger)
                for name, fn in SECTIONS.items()}
    failed = run_sections(sections, args.only)
    for suite, found in ((SUITE, rows), (SUITE + "-sweep", sweep_rows)):
        if found:  # a partial run (--only) never overwrites the other file with nothing
            print_table(found)
            print(f"results: {write_results(suite, found)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
