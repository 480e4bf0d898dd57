"""Which path each op should take inside ``torch.compile``: our kernel against Inductor's fusion of the
PyTorch path, each op compiled together with the neighbours it has in a transformer.

Per case, fwd+bwd of one compiled function under bf16 autocast with fp32 parameters and residual stream (as a
training step runs it; attention scores in bf16): ``torch`` = every op on its PyTorch path (what Inductor
fuses), ``ours`` = the op under test on its blockzoo kernel (its neighbours as the shipped table says).
Row ratio = torch_ms / ours_ms (> 1: our kernel wins inside the graph). The norms are also timed alone,
eager and compiled, to check that our kernel runs inside a graph as fast as called eagerly.
``--write-table`` writes ``blockzoo/ops/compiled_paths.json`` from the rows: an op keeps our kernel
where it won (ratio >= 1) on every case of its shape class. Usage:
``python benchmarks/bench_compiled_parts.py [--write-table] [--only layer_norm,softmax]``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

TABLE = Path(__file__).resolve().parent.parent / "blockzoo" / "ops" / "compiled_paths.json"
M = 16384  # tokens of a GPT-2-small step (16 x 1024)


def fwd_bwd(fn: Callable, inputs: list[torch.Tensor]) -> Callable[[], None]:
    """A closure running fn(*inputs) and its backward with a fixed random gradient."""
    out = fn(*inputs)
    grad = torch.randn_like(out)

    def step() -> None:
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(grad)

    return step


def cases(d: int) -> dict[str, tuple[Callable, Callable[[], list[torch.Tensor]], int]]:
    """name -> (function over blockzoo.ops, input factory, row width of the op); ``d`` the model width."""
    from blockzoo import ops

    def leaf(*shape, dtype=torch.float32, scale=1.0):  # fp32 parameters and residual stream, as in training
        return (torch.randn(*shape, device="cuda", dtype=dtype) * scale).requires_grad_()

    def add_norm(x, r, w, b):  # residual add, then the block's norm
        return ops.layer_norm(x + r, (x.shape[-1],), w, b)

    def add_rms(x, r, w):
        return ops.rms_norm(x + r, (x.shape[-1],), w)

    def linear_bias_gelu_dropout(x, w, b):  # the MLP's first GEMM, then bias + GELU + dropout
        return ops.dropout_bias_act(F.linear(x, w), b, 0.1, "gelu")

    def linear_act(x, w, b):
        return ops.linear_act(x, w, b, "gelu")

    def scaled_masked_softmax(s, keep):  # attention-style scores: scale, mask, softmax
        return ops.softmax(s * 0.125, mask=keep)

    def norm_then_lm_head(x, w, b, head):  # final norm, tied LM head, cross-entropy
        target = torch.arange(x.shape[0], device=x.device) % head.shape[0]
        return ops.fused_linear_cross_entropy(ops.layer_norm(x, (x.shape[-1],), w, b), head, target)

    ones = lambda n: torch.ones(n, device="cuda").requires_grad_()  # noqa: E731
    out = {
        f"layer_norm: x + r -> layer_norm, {M}x{d}": (add_norm, lambda: [leaf(M, d), leaf(M, d), ones(d), leaf(d)], d),
        f"rms_norm: x + r -> rms_norm, {M}x{d}": (add_rms, lambda: [leaf(M, d), leaf(M, d), ones(d)], d),
        f"dropout_bias_act: linear -> bias+gelu+dropout, {M}x{d}->{4 * d}":
            (linear_bias_gelu_dropout, lambda: [leaf(M, d), leaf(4 * d, d, scale=0.02), leaf(4 * d)], 4 * d),
        f"linear_act: linear+bias+gelu, {M}x{d}->{4 * d}":
            (linear_act, lambda: [leaf(M, d), leaf(4 * d, d, scale=0.02), leaf(4 * d)], d),
        f"fused_linear_cross_entropy: layer_norm -> LM head -> CE, {M}x{d}, V=50304":
            (norm_then_lm_head, lambda: [leaf(M, d), ones(d), leaf(d), leaf(50304, d, scale=0.02)], d),
    }
    for n in (1024, 4096, 32768):
        rows = max(256, (1 << 26) // n)
        out[f"softmax: scale -> bool mask -> softmax, {rows}x{n}"] = (
            scaled_masked_softmax, lambda rows=rows, n=n: [leaf(rows, n, dtype=torch.bfloat16), torch.rand(rows, n, device="cuda") < 0.9], n)
    return out


@contextlib.contextmanager
def path_for(op: str, mode: str):
    """'torch': every op on the torch path. 'ours' / 'eager': ``op`` on our kernel (inside a graph through the
    compiled-path table), its neighbours as the table says. Held while timing: the graph guards on it."""
    from blockzoo.ops import backend

    if mode == "torch":
        with backend.force("torch"):
            yield
        return
    saved = backend.COMPILED_PATHS.get(op)
    backend.COMPILED_PATHS[op] = [(None, "triton")]
    try:
        yield
    finally:
        if saved is None:
            backend.COMPILED_PATHS.pop(op)
        else:
            backend.COMPILED_PATHS[op] = saved


def time_case(op: str, fn: Callable, make: Callable, mode: str) -> float:
    """fwd+bwd ms of ``fn`` compiled with every op on the torch path ('torch'), compiled with ``op`` on our
    kernel ('ours'), or called eagerly with our kernels ('eager')."""
    from common import bench

    torch._dynamo.reset()
    inputs = make()
    with path_for(op, mode), torch.autocast("cuda", dtype=torch.bfloat16):
        return bench(fwd_bwd(fn if mode == "eager" else torch.compile(fn), inputs))


def diagnose(fn: Callable, make: Callable, op: str) -> None:
    """Our kernels' device time per call, eager against inside a compiled graph, and how Inductor's generated
    code launches them (grid, num_warps): why a kernel could run slower inside a graph."""
    from torch._inductor.utils import run_and_get_code
    from torch.profiler import ProfilerActivity, profile

    for mode in ("eager", "ours"):
        torch._dynamo.reset()
        inputs = make()
        with path_for(op, mode), torch.autocast("cuda", dtype=torch.bfloat16):
            f = fn if mode == "eager" else torch.compile(fn)
            step = fwd_bwd(f, inputs)
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    step()
                torch.cuda.synchronize()
            if mode == "ours":
                _, code = run_and_get_code(f, *inputs)
                for line in "\n".join(code).splitlines():
                    if "_kernel" in line and ("run(" in line or "grid" in line or "num_warps" in line):
                        print("   inductor:", line.strip()[:200])
        for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:6]:
            print(f"  {op} {mode:5s} {e.device_time_total / 10 / 1e3:8.4f} ms/step  {e.count // 10:3d}x  {e.key[:80]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=768, help="model width d (default: GPT-2-small's 768)")
    parser.add_argument("--only", default=None, help="comma-separated op names to run")
    parser.add_argument("--write-table", action="store_true", help="write blockzoo/ops/compiled_paths.json")
    parser.add_argument("--diagnose", action="store_true",
                        help="for the norms: kernel times eager vs inside the graph, and Inductor's launch lines")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_compiled_parts.py needs a CUDA GPU")
    from common import print_table, row, write_results

    rows, choice = [], {}
    for case, (fn, make, width) in cases(args.width).items():
        op = case.split(":")[0]
        if args.only and op not in args.only.split(","):
            continue
        try:
            torch_ms = time_case(op, fn, make, "torch")
            ours_ms = time_case(op, fn, make, "ours")
        except Exception as e:  # one failing case must not lose the others
            print(f"{case}: FAILED {type(e).__name__}: {e}")
            continue
        r = row(case + " fwd+bwd, compiled", "inductor (torch path)", torch_ms, ours_ms, target=1.0)
        r["path"] = "triton" if r["met"] else "torch"
        rows.append(r)
        choice.setdefault(op, []).append((width, r["path"]))
        if args.diagnose and op in ("layer_norm", "rms_norm"):
            diagnose(fn, make, op)
        if op in ("layer_norm", "rms_norm"):  # inside a graph as fast as eagerly?
            eager_ms = time_case(op, fn, make, "eager")
            rows.append(row(case + " fwd+bwd, ours compiled vs ours eager", "ours eager", eager_ms, ours_ms,
                            target=0.95))
    print_table(rows)
    print("wrote", write_results("compiled-parts", rows))
    if args.write_table:
        write_table(choice)


def write_table(choice: dict[str, list[tuple[int, str]]]) -> None:
    """Per op, its measured (width, path) cases as rules [max_row, path]: contiguous widths of one path
    merge, and the widest rule extends to any width."""
    table = json.loads(TABLE.read_text())
    for op, picks in choice.items():
        rules: list[list] = []
        for width, path in sorted(picks):
            if rules and rules[-1][1] == path:
                rules[-1][0] = width
            else:
                rules.append([width, path])
        rules[-1][0] = None
        table["ops"][op] = rules
    table["source"] = (f"benchmarks/bench_compiled_parts.py --write-table on {torch.cuda.get_device_name()}, "
                       f"torch {torch.__version__}")
    TABLE.write_text(json.dumps(table, indent=1) + "\n")
    print("wrote", TABLE)

if __name__ == "__main__":
    main()
