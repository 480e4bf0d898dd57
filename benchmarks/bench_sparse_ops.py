"""Benchmark of the sparse primitives (suite "sparse-ops" on the GPU, "sparse-ops-cpu" with ``--cpu``).

GPU (TARGETS.md "Sparse primitives"; B*H = 64, L = 4096, D = 64, one random pattern shared by the heads,
densities 1/3/10/30 %, fp32 and bf16):
  * SDDMM (sampled q k^T) against ``torch.sparse.sampled_addmm`` on a batched CSR tensor,
  * SpMM (sparse scores x v) against per-head ``csr @ dense``,
  * sparse softmax forward+backward against a dense masked softmax over the same rows.
  torch.sparse runs fp32 when it refuses bf16 (the peer name says which dtype ran).
CPU (this machine): sparse attention (sddmm -> sparse_softmax -> spmm) at 1 % density, L = 4096, D = 64,
fp32, forward and forward+backward, against dense masked SDPA: median time and the peak resident memory one
call adds (Linux /proc VmHWM), each measured in a fresh process.
Every case is first checked against its peer (``check:`` lines). Usage:
``python benchmarks/bench_sparse_ops.py [--cpu [--heads N] [--threads 1,2]]``.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import multiprocessing as mp
import os
import platform
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from common import RESULTS, cpu_median_ms, print_table, row

from blockzoo.ops.sparse import SparseLayout, sddmm, sparse_softmax, spmm

warnings.filterwarnings("ignore", message="Sparse (CSR tensor support is in beta|invariant checks)")
BH, L, D = 64, 4096, 64
DENSITIES = (0.01, 0.03, 0.1, 0.3)
TARGET_TORCH_SPARSE = 10.0


def check(name: str, ours: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Print and assert the relative error of ``ours`` against ``ref``."""
    err = float((ours.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))
    print(f"check: {name}: rel err {err:.2e} (tol {tol:.0e})")
    if not err <= tol:
        raise AssertionError(f"{name}: rel err {err:.3e} > {tol:.0e}")


# ------------------------------------------------------------------------------------------- GPU
def peer_dtype(fn: Callable[[torch.dtype], object], dtype: torch.dtype) -> torch.dtype:
    """``dtype`` when the torch.sparse peer accepts it, else float32."""
    try:
        fn(dtype)
        return dtype
    except RuntimeError:
        return torch.float32


def gpu_rows() -> list[dict]:
    from common import bench

    rows = []
    for density in DENSITIES:
        mask = torch.rand(L, L, device="cuda") < density
        layout = SparseLayout.from_mask(mask)
        layout.transpose()
        nnz = layout.nnz
        crow = layout.row_offsets.expand(BH, -1).contiguous()
        col = layout.col_indices.expand(BH, -1).contiguous()
        pct = f"{density:.0%}"
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            q, k, v = (torch.randn(BH, L, D, device="cuda", dtype=dtype) for _ in range(3))
            values = torch.randn(BH, nnz, device="cuda", dtype=dtype)

            def csr(dt: torch.dtype) -> torch.Tensor:
                return torch.sparse_csr_tensor(crow, col, values.to(dt), (BH, L, L))

            def sampled(dt: torch.dtype) -> torch.Tensor:
                return torch.sparse.sampled_addmm(csr(dt), q.to(dt), k.to(dt).transpose(-1, -2), beta=0.0)

            sdt = peer_dtype(sampled, dtype)
            s_csr, qs, kt = csr(sdt), q.to(sdt), k.to(sdt).transpose(-1, -2)
            check(f"sddmm {pct} {name}", sddmm(q, k, layout),
                  torch.sparse.sampled_addmm(s_csr, qs, kt, beta=0.0).values(), tol)
            peer_ms = bench(lambda: torch.sparse.sampled_addmm(s_csr, qs, kt, beta=0.0))
            ours_ms = bench(lambda: sddmm(q, k, layout))
            rows.append(row(f"sddmm {name} {pct} BH={BH} L={L} D={D}",
                            f"torch.sparse.sampled_addmm ({str(sdt).removeprefix('torch.')})", peer_ms, ours_ms,
                            target=TARGET_TORCH_SPARSE))

            def per_head(dt: torch.dtype) -> list[torch.Tensor]:
                heads = [torch.sparse_csr_tensor(layout.row_offsets, layout.col_indices, values[h].to(dt), (L, L))
                         for h in range(BH)]
                heads[0] @ v[0].to(dt)
                return heads

            pdt = peer_dtype(per_head, dtype)
            heads, vp = per_head(pdt), v.to(pdt)
            check(f"spmm {pct} {name}", spmm(values, layout, v), torch.stack([heads[h] @ vp[h] for h in range(BH)]),
                  tol)
            peer_ms = bench(lambda: [heads[h] @ vp[h] for h in range(BH)])
            ours_ms = bench(lambda: spmm(values, layout, v))
            rows.append(row(f"spmm {name} {pct} BH={BH} L={L} D={D}",
                            f"per-head csr @ dense ({str(pdt).removeprefix('torch.')})", peer_ms, ours_ms,
                            target=TARGET_TORCH_SPARSE))
            del heads, s_csr
            rows.append(softmax_row(mask, layout, values, pct, name, bench))
            torch.cuda.empty_cache()
    return rows


def softmax_row(mask: torch.Tensor, layout: SparseLayout, values: torch.Tensor, pct: str, name: str,
                bench: Callable) -> dict:
    """Sparse softmax fwd+bwd against masked_fill + softmax fwd+bwd on the dense (BH, L, L) scores."""
    x = values.detach().clone().requires_grad_()
    dense = torch.zeros(BH, L, L, device="cuda", dtype=values.dtype)
    dense[:, mask] = values
    dense.requires_grad_()
    gy, gd = torch.randn_like(values), torch.randn_like(dense)

    def ours() -> None:
        sparse_softmax(x, layout).backward(gy)

    def peer() -> None:
        torch.softmax(dense.masked_fill(~mask, float("-inf")), -1).backward(gd)

    check(f"softmax {pct} {name}", sparse_softmax(values, layout),
          torch.softmax(dense.detach().masked_fill(~mask, float("-inf")), -1)[:, mask],
          1e-5 if values.dtype == torch.float32 else 2e-2)
    density = layout.density
    return row(f"sparse softmax fwd+bwd {name} {pct} BH={BH} L={L}", "dense masked softmax", bench(peer),
               bench(ours), target=round(min(1 / density, 10.0), 2))


def write_gpu(rows: list[dict]) -> None:
    from common import write_results

    print("wrote", write_results("sparse-ops", rows))


# ------------------------------------------------------------------------------------------- CPU
def cpu_inputs(heads: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    mask = torch.rand(L, L) < 0.01
    q, k, v = (torch.randn(1, heads, L, D) for _ in range(3))
    return mask, q, k, v


def sparse_attention(mask: torch.Tensor, layout: SparseLayout, q, k, v) -> torch.Tensor:
    return spmm(sparse_softmax(sddmm(q, k, layout, D ** -0.5), layout), layout, v)


def dense_attention(mask: torch.Tensor, layout: SparseLayout | None, q, k, v) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _status_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in kB."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def _measure(kind: str, backward: bool, heads: int, reps: int, threads: int, queue: mp.Queue) -> None:
    """In a fresh process: (median ms, peak resident memory added by one call in MB)."""
    torch.set_num_threads(threads)
    mask, q, k, v = cpu_inputs(heads)
    if backward:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    attend = sparse_attention if kind == "sparse" else dense_attention
    layout = SparseLayout.from_mask(mask) if kind == "sparse" else None
    if layout is not None and backward:
        layout.transpose()

    def call() -> None:
        out = attend(mask, layout, q, k, v)
        if backward:
            out.sum().backward()

    with open("/proc/self/clear_refs", "w") as f:  # restart the peak (VmHWM) from the current RSS
        f.write("5")
    before = _status_kb("VmRSS")
    call()
    peak_mb = (_status_kb("VmHWM") - before) / 1024
    queue.put((cpu_median_ms(call, reps), peak_mb))


def measure(kind: str, backward: bool, heads: int, reps: int, threads: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(kind, backward, heads, reps, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def cpu_rows(heads: int, reps: int, thread_counts: list[int]) -> tuple[list[dict], list[dict]]:
    mask, q, k, v = cpu_inputs(heads)
    layout = SparseLayout.from_mask(mask)
    check("sparse attention vs SDPA (cpu)", sparse_attention(mask, layout, q, k, v),
          dense_attention(mask, None, q, k, v), 1e-5)
    rows, memory = [], []
    for threads, backward in itertools.product(thread_counts, (False, True)):
        what = "fwd+bwd" if backward else "fwd"
        dense_ms, dense_mb = measure("dense", backward, heads, reps, threads)
        ours_ms, ours_mb = measure("sparse", backward, heads, reps, threads)
        case = f"sparse attention {what} fp32 1% B=1 H={heads} L={L} D={D} (cpu, {threads} threads)"
        rows.append(row(case, "dense masked SDPA", dense_ms, ours_ms, target=5.0))
        memory.append({"case": case, "dense_peak_MB": round(dense_mb, 1), "ours_peak_MB": round(ours_mb, 1),
                       "nnz": layout.nnz * heads})
    return rows, memory


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else the platform's machine name."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def write_cpu(rows: list[dict], memory: list[dict]) -> None:
    today = datetime.date.today().isoformat()
    meta = {"date": today, "device": cpu_name(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "copy_ceiling_TBps": None,
            "peak_memory": memory,
            "memory_note": "peak resident memory added by one call (VmHWM - VmRSS before it), MB"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{today}-cpu-sparse-ops-cpu.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("wrote", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--cpu", action="store_true", help="the CPU suite (sparse attention vs dense SDPA)")
    parser.add_argument("--heads", type=int, default=4, help="heads of the CPU suite (B = 1)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of the CPU suite")
    parser.add_argument("--threads", default=str(torch.get_num_threads()),
                        help="comma-separated thread counts of the CPU suite, e.g. 1,2")
    args = parser.parse_args()
    if args.cpu:
        rows, memory = cpu_rows(args.heads, args.reps, [int(t) for t in args.threads.split(",")])
        print_table(rows)
        for m in memory:
            print(f"peak memory: {m['case']}: dense {m['dense_peak_MB']} MB, ours {m['ours_peak_MB']} MB "
                  f"(nnz {m['nnz']})")
        write_cpu(rows, memory)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench_sparse_ops.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                             "--cpu runs the CPU suite")
        rows = gpu_rows()
        print_table(rows)
        write_gpu(rows)


if __name__ == "__main__":
    main()
