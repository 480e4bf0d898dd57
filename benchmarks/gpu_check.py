"""GPU correctness check of every fast op against the float64 PyTorch reference (run on the H200).

Each op runs with ``blockzoo.ops.force("triton")`` on fresh random CUDA inputs, forward and
backward, and is compared with ``blockzoo.ops.torch_ref`` in float64. Prints one line per case
and exits non-zero when any case fails. Usage: ``python benchmarks/gpu_check.py [--json out.json]``.
"""
from __future__ import annotations

import argparse
import datetime
import faulthandler
import json
import sys
import traceback
from typing import Callable

import torch

import blockzoo
from blockzoo.blocks.attention.local import LocalAttention, LocalConfig, window_mask
from blockzoo.ops import torch_ref

TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
results: list[dict] = []


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖; a reference that is (near) zero everywhere is compared absolutely, per element."""
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    finite = torch.isfinite(b)
    floor = 1e-3 * finite.sum().sqrt()
    return float((a[finite] - b[finite]).norm() / torch.maximum(b[finite].norm(), floor))


def case(name: str, dtype: torch.dtype, fast: Callable, ref: Callable, inputs: list[torch.Tensor],
         tol_scale: float = 1.0) -> None:
    """Compare fast(*inputs) with ref(*inputs in float64), forward and backward."""
    try:
        xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        rs = [t.detach().double().clone().requires_grad_(t.is_floating_point()) if t.is_floating_point()
              else t.detach().clone() for t in inputs]
        with blockzoo.ops.force("triton"):
            with torch.no_grad():  # the first call compiles and binds; the checked one re-launches from the cache
                fast(*[x.detach() for x in xs])
            out = fast(*xs)
        expect = ref(*rs)
        g = torch.randn_like(expect)
        out.backward(g.to(out.dtype))
        expect.backward(g)
        errs = {"fwd": rel(out, expect)}
        for i, (x, r) in enumerate(zip(xs, rs)):
            if x.is_floating_point() and r.grad is not None:
                errs[f"grad{i}"] = rel(x.grad, r.grad) if x.grad is not None else float("inf")
        tol = TOL[dtype] * tol_scale
        ok = all(e <= tol for e in errs.values())
    except Exception as e:  # report and continue: one broken op must not hide the others
        traceback.print_exc()
        errs, ok, tol = {"error": f"{type(e).__name__}: {e}"}, False, None
    results.append({"case": name, "dtype": str(dtype), "errors": errs, "tol": tol, "ok": ok})
    print(f"{'OK  ' if ok else 'FAIL'} {name} {dtype}: {errs}", flush=True)


def rnd(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", dtype=dtype)


def check_softmax(dtype: torch.dtype) -> None:
    for rows, n in [(37, 1), (64, 333), (16, 4097), (8, 70000), (4, 131072)]:
        case(f"softmax {rows}x{n}", dtype, lambda x: blockzoo.ops.softmax(x), lambda x: torch_ref.softmax(x),
             [rnd(rows, n, dtype=dtype)])
        case(f"log_softmax {rows}x{n}", dtype, lambda x: blockzoo.ops.softmax(x, log=True),
             lambda x: torch_ref.softmax(x, log=True), [rnd(rows, n, dtype=dtype)])
    mask = torch.rand(100, 257, device="cuda") < 0.5
    mask[3] = False
    x = rnd(2, 3, 100, 257, dtype=dtype)
    case("softmax bool mask (L,S) over (B,H,L,S)", dtype, lambda x: blockzoo.ops.softmax(x, mask=mask),
         lambda x: torch_ref.softmax(x, mask=mask), [x])
    case("softmax causal", dtype, lambda x: blockzoo.ops.softmax(x, causal=True),
         lambda x: torch_ref.softmax(x, causal=True), [rnd(2, 3, 129, 129, dtype=dtype)])
    add = torch.randn(100, 257, device="cuda")
    case("softmax additive mask + causal", dtype, lambda x: blockzoo.ops.softmax(x, mask=add, causal=True),
         lambda x: torch_ref.softmax(x, mask=add, causal=True), [rnd(2, 100, 257, dtype=dtype)])


def check_norms(dtype: torch.dtype) -> None:
    for rows, n in [(37, 1), (64, 333), (16, 4097), (8, 65536)]:
        ws = [rnd(n, dtype=dtype), rnd(n, dtype=dtype)]
        case(f"layer_norm {rows}x{n}", dtype, lambda x, w, b: blockzoo.ops.layer_norm(x, (n,), w, b),
             lambda x, w, b: torch_ref.layer_norm(x, (n,), w, b), [rnd(rows, n, dtype=dtype), *ws], 2.0)
        case(f"rms_norm {rows}x{n}", dtype, lambda x, w: blockzoo.ops.rms_norm(x, (n,), w),
             lambda x, w: torch_ref.rms_norm(x, (n,), w), [rnd(rows, n, dtype=dtype), ws[0]], 2.0)
    x = rnd(64, 96, dtype=dtype).t()  # non-contiguous
    case("layer_norm non-contiguous, no affine", dtype, lambda x: blockzoo.ops.layer_norm(x, (64,)),
         lambda x: torch_ref.layer_norm(x, (64,)), [x])


def check_fused(dtype: torch.dtype) -> None:
    for act in torch_ref.ACTIVATIONS:
        case(f"bias+{act} (p=0)", dtype, lambda x, b: blockzoo.ops.dropout_bias_act(x, b, 0.0, act),
             lambda x, b: torch_ref.dropout_bias_act(x, b, 0.0, act), [rnd(333, 1025, dtype=dtype), rnd(1025, dtype=dtype)], 2.0)
    for act in ("gelu", "relu", "silu", "gelu_tanh"):
        case(f"linear_act {act} 333x256->520", dtype, lambda x, w, b: blockzoo.ops.linear_act(x, w, b, act),
             lambda x, w, b: torch_ref.linear_act(x, w, b, act),
             [rnd(333, 256, dtype=dtype), rnd(520, 256, dtype=dtype) * 0.06, rnd(520, dtype=dtype)], 3.0)
    target = torch.randint(0, 50304, (1000,), device="cuda")
    target[::7] = -100
    case("fused_linear_cross_entropy V=50304", dtype,
         lambda h, w, t: blockzoo.ops.fused_linear_cross_entropy(h, w, t),
         lambda h, w, t: torch_ref.fused_linear_cross_entropy(h, w, t),
         [rnd(1000, 768, dtype=dtype), rnd(50304, 768, dtype=dtype) * 0.03, target], 3.0)


def check_dropout() -> None:
    x = torch.randn(4096, 1024, device="cuda")
    with blockzoo.ops.force("triton"):
        y = blockzoo.ops.dropout_bias_act(x, None, 0.25, "none", seed=123)
        y2 = blockzoo.ops.dropout_bias_act(x, None, 0.25, "none", seed=123)
    keep = (y != 0).float().mean().item()
    ok = abs(keep - 0.75) < 0.005 and torch.equal(y, y2) and torch.allclose(y[y != 0], (x / 0.75)[y != 0])
    results.append({"case": "dropout keep rate / determinism", "dtype": "float32", "errors": {"keep": keep}, "ok": ok})
    print(f"{'OK  ' if ok else 'FAIL'} dropout keep rate {keep:.4f}, deterministic {torch.equal(y, y2)}", flush=True)


def check_attention(dtype: torch.dtype) -> None:
    B, H, L, D = 2, 4, 1000, 64
    q, k, v = rnd(B, H, L, D, dtype=dtype), rnd(B, H, L, D, dtype=dtype), rnd(B, H, L, D, dtype=dtype)
    masks = {"random 1%": torch.rand(L, L, device="cuda") < 0.01,
             "random 30%": torch.rand(L, L, device="cuda") < 0.3,
             "band 64": (torch.arange(L)[:, None] - torch.arange(L)[None]).abs().cuda() <= 32,
             "blocks 10%": (torch.rand(8, 8, device="cuda") < 0.1).repeat_interleave(128, 0).repeat_interleave(128, 1)[:L, :L]}
    paths = getattr(blockzoo.ops.attention, "PATHS", ("dense",))
    for mname, mask in masks.items():
        mask = mask.clone()
        mask[5] = False  # a fully masked row
        for path in paths:
            if path == "flash":
                continue
            case(f"masked_attention {mname} path={path}", dtype,
                 lambda q, k, v: blockzoo.ops.masked_attention(q, k, v, mask, path=path),
                 lambda q, k, v: torch_ref.attention(q, k, v, mask), [q, k, v], 3.0)
    for causal in (False, True):  # the local component: a band BlockMask with its planner-chosen tile
        local = LocalAttention(LocalConfig(name="local", window_size=129))
        window = window_mask(L, L, 129, "cuda")
        case(f"LocalAttention window 129 causal={causal}", dtype,
             lambda q, k, v: local(q, k, v, causal=causal),
             lambda q, k, v: torch_ref.attention(q, k, v, window, causal=causal), [q, k, v], 3.0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Every op forced to its fast path on a CUDA GPU, forward and backward against the float64 "
                    "PyTorch reference; prints one OK/FAIL line per case.")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the cases to this JSON file")
    parser.add_argument("--only", default="attention,softmax,norms,fused,dropout",
                        help="comma-separated groups to check, in this order")
    parser.add_argument("--hang-dump", type=float, default=0.0,
                        help="print every thread's stack after this many seconds (finding a hang)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    if args.hang_dump:
        faulthandler.dump_traceback_later(args.hang_dump, exit=False)
    torch.manual_seed(0)
    groups = {"attention": (check_attention, (torch.float16, torch.bfloat16)),
              "softmax": (check_softmax, (torch.float32, torch.float16, torch.bfloat16)),
              "norms": (check_norms, (torch.float32, torch.float16, torch.bfloat16)),
              "fused": (check_fused, (torch.float32, torch.float16, torch.bfloat16)),
              "dropout": (lambda _dtype: check_dropout(), (None,))}
    for group in args.only.split(","):
        fn, dtypes = groups[group]
        for dtype in dtypes:
            fn(dtype)
    failed = [r for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
                       "results": results}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
