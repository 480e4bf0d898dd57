"""Benchmark of the fused Triton ops (suite "triton-fused"): dropout_bias_act, linear_act and
fused_linear_cross_entropy against torch eager, torch.compile, cuBLASLt's epilogue and Liger.

Every case first checks our output against the peer's (printed as ``check:`` lines), then times both
with ``common.bench``. Usage on a GPU: ``python benchmarks/bench_triton_fused.py [--only dropout,linear,ce]``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch
import torch.nn.functional as F
from common import bench, measure_copy_ceiling, peak_mb, print_table, row, run_sections, write_results

import blockzoo
from blockzoo.ops.triton import linear_act as triton_linear

BF16 = torch.bfloat16
DEVICE = "cuda"
DROPOUT_SHAPE = (32768, 4096)  # rows, cols
LINEAR_SHAPE = (8192, 4096, 16384)  # M, K, N
CE_SHAPE = (16384, 768, 50304)  # rows, hidden, vocabulary


def warm(fn: Callable[[], object], op: str | None = None) -> Callable[[], object]:
    """Call ``fn`` once (compile, autotune), check the recorded path, and return it for timing."""
    fn()
    torch.cuda.synchronize()
    if op is not None:
        assert blockzoo.ops.last_path(op) == "triton", f"{op} took the {blockzoo.ops.last_path(op)} path"
    return fn


def check(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    err = float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))
    print(f"check: {name}: relative error {err:.2e}")


def fwd_bwd(fn: Callable, inputs: list[torch.Tensor], grad: torch.Tensor | None = None) -> Callable[[], None]:
    """One training step of ``fn(*inputs)``: fresh grads, forward, backward."""
    def step():
        for t in inputs:
            t.grad = None
        out = fn(*inputs)
        out.backward(grad if grad is not None else torch.ones_like(out))
    return step


def bench_dropout(rows: list[dict]) -> None:
    (m, n), p = DROPOUT_SHAPE, 0.1
    x = torch.randn(m, n, device=DEVICE, dtype=BF16)
    b = torch.randn(n, device=DEVICE, dtype=BF16)
    dy = torch.randn_like(x)

    def eager(x, b):
        return F.dropout(F.gelu(x + b), p, training=True)

    def fast(x, b):
        return blockzoo.ops.dropout_bias_act(x, b, p, "gelu")

    check("dropout_bias_act p=0 vs gelu(x+b)", blockzoo.ops.dropout_bias_act(x, b, 0.0, "gelu"),
          F.gelu(x.float() + b.float()))
    kept = (blockzoo.ops.dropout_bias_act(torch.ones_like(x), None, p, "none") != 0).float().mean().item()
    print(f"check: dropout keep rate {kept:.5f} (expected {1 - p})")
    compiled = torch.compile(eager)
    case = f"dropout(gelu(x+bias)) fwd bf16 {m}x{n} p={p}"
    ours_ms = bench(warm(lambda: fast(x, b), "dropout_bias_act"))
    nbytes = 2 * x.numel() * x.element_size()
    for peer, fn, target in (("eager", eager, None), ("compile", compiled, 3.0)):
        peer_ms = bench(warm(lambda fn=fn: fn(x, b)))
        rows.append(row(case, peer, peer_ms, ours_ms, bytes_moved=nbytes, target=target))

    xg, bg = x.clone().requires_grad_(), b.clone().requires_grad_()
    case = f"dropout(gelu(x+bias)) fwd+bwd bf16 {m}x{n} p={p}"
    ours_ms = bench(warm(fwd_bwd(fast, [xg, bg], dy), "dropout_bias_act"))
    nbytes = 5 * x.numel() * x.element_size()  # fwd: read x, write y; bwd: read dy and x, write dx
    for peer, fn, target in (("eager", eager, None), ("compile", compiled, 2.5)):
        peer_ms = bench(warm(fwd_bwd(fn, [xg, bg], dy)))
        rows.append(row(case, peer, peer_ms, ours_ms, bytes_moved=nbytes, target=target))
        if peer == "compile":  # the same kernels inside a compiled graph: no Python per op on either side
            ours_c = bench(warm(fwd_bwd(torch.compile(fast), [xg, bg], dy)))  # set_backend: triton or raise
            rows.append(row(case + ", ours under torch.compile", peer, peer_ms, ours_c, bytes_moved=nbytes,
                            target=target))


def bench_linear(rows: list[dict]) -> None:
    m, k, n = LINEAR_SHAPE
    x = torch.randn(m, k, device=DEVICE, dtype=BF16)
    w = torch.randn(n, k, device=DEVICE, dtype=BF16) / k**0.5
    b = torch.randn(n, device=DEVICE, dtype=BF16)

    def eager(x, w, b):
        return F.gelu(F.linear(x, w, b))

    def fast(x, w, b, act="gelu"):
        return blockzoo.ops.linear_act(x, w, b, act)

    compiled = torch.compile(eager)
    gemm_ms = bench(warm(lambda: torch.mm(x, w.t())))
    shape = f"bf16 {m}x{k} -> {n}"
    with torch.no_grad():
        check("linear_act gelu (triton epilogue) vs eager", fast(x, w, b), eager(x.float(), w.float(), b.float()))
        ours_ms = bench(warm(lambda: fast(x, w, b), "linear_act"))
        case = f"linear+bias+gelu fwd {shape}"
        rows.append(row(case, "gemm alone", gemm_ms, ours_ms, target=round(1 / 1.02, 4)))
        rows.append(row(case, "eager", bench(warm(lambda: eager(x, w, b))), ours_ms))
        rows.append(row(case, "compile", bench(warm(lambda: compiled(x, w, b))), ours_ms))
        lt_ms = bench(warm(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)))
        rows.append(row(case, "cublaslt epilogue (gelu_tanh)", lt_ms, ours_ms))

        previous = triton_linear.set_epilogue("cublaslt")
        try:
            ours_lt_ms = bench(warm(lambda: fast(x, w, b, "gelu_tanh"), "linear_act"))
        finally:
            triton_linear.set_epilogue(previous)
        rows.append(row(f"linear+bias+gelu_tanh fwd {shape}, ours with set_epilogue('cublaslt')", "gemm alone",
                        gemm_ms, ours_lt_ms, target=round(1 / 1.02, 4)))
        previous = triton_linear.set_epilogue("triton")
        try:
            tanh_ms = bench(warm(lambda: fast(x, w, b, "gelu_tanh"), "linear_act"))
            triton_gelu_ms = bench(warm(lambda: fast(x, w, b), "linear_act"))
        finally:
            triton_linear.set_epilogue(previous)
        rows.append(row(f"linear+bias+gelu_tanh fwd {shape}, triton epilogue", "cublaslt epilogue (gelu_tanh)",
                        lt_ms, tanh_ms))
        rows.append(row(f"linear+bias+gelu fwd {shape}, triton epilogue", "gemm alone", gemm_ms, triton_gelu_ms))

    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    dy = torch.randn(m, n, device=DEVICE, dtype=BF16)
    ours_ms = bench(warm(lambda: fast(xg, wg, bg), "linear_act"))
    rows.append(row(f"linear+bias+gelu fwd {shape}, grad enabled (z stored)", "gemm alone", gemm_ms, ours_ms))
    case = f"linear+bias+gelu fwd+bwd {shape}"
    ours_ms = bench(warm(fwd_bwd(fast, [xg, wg, bg], dy), "linear_act"))
    for peer, fn in (("eager", eager), ("compile", compiled)):
        rows.append(row(case, peer, bench(warm(fwd_bwd(fn, [xg, wg, bg], dy))), ours_ms))


def _liger() -> Callable | None:
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except Exception as e:  # optional peer
        print(f"liger-kernel not available ({type(e).__name__}: {e}); skipping the Liger peer")
        return None
    loss = LigerFusedLinearCrossEntropyLoss()
    return lambda h, w, t: loss(w, h, t)


def bench_cross_entropy(rows: list[dict]) -> None:
    n, d, v = CE_SHAPE
    h = torch.randn(n, d, device=DEVICE, dtype=BF16, requires_grad=True)
    w = (torch.randn(v, d, device=DEVICE, dtype=BF16) * 0.02).requires_grad_()
    t = torch.randint(0, v, (n,), device=DEVICE)

    def eager(h, w, t):
        return F.cross_entropy(h @ w.t(), t)

    def fast(h, w, t):
        return blockzoo.ops.fused_linear_cross_entropy(h, w, t)

    peers: list[tuple[str, Callable]] = [("eager", eager), ("compile", torch.compile(eager))]
    liger = _liger()
    if liger is not None:
        peers.append(("liger", liger))

    with torch.no_grad():
        check("fused_linear_cross_entropy loss vs eager (fp32 logits)", fast(h, w, t),
              F.cross_entropy(h.float() @ w.float().t(), t))
    case = f"fused linear cross-entropy fwd+bwd bf16 {n}x{d} V={v}"
    step = warm(fwd_bwd(lambda h, w: fast(h, w, t), [h, w]), "fused_linear_cross_entropy")
    ours_ms, ours_mem = bench(step), peak_mb(step)
    for peer, fn in peers:
        peer_step = warm(fwd_bwd(lambda h, w, fn=fn: fn(h, w, t), [h, w]))
        r = row(case, peer, bench(peer_step), ours_ms)
        r.update(peer_peak_mb=round(peak_mb(peer_step), 1), ours_peak_mb=round(ours_mem, 1))
        rows.append(r)
        print(f"peak memory {peer}: {r['peer_peak_mb']} MiB, ours: {r['ours_peak_mb']} MiB")


SECTIONS = {"dropout": bench_dropout, "linear": bench_linear, "ce": bench_cross_entropy}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections: " + ", ".join(SECTIONS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_triton_fused.py needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    blockzoo.ops.set_backend("triton")  # a failure raises instead of timing the fallback; no per-call context
    print(f"copy ceiling: {measure_copy_ceiling():.2f} TB/s")
    rows: list[dict] = []
    failed = run_sections({name: lambda fn=fn: fn(rows) for name, fn in SECTIONS.items()}, args.only)
    print_table(rows)
    print(f"results: {write_results('triton-fused', rows)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
