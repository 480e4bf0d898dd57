"""Host time per call of the fast ops, on any machine (no GPU needed): ``python benchmarks/host_time.py``.

The GPU benchmarks time kernels and host together; on small calls the host decides (see the README's
attention section). Here every Triton launch is replaced by a no-op (``TRITON_INTERPRET=1`` and
``BLOCKZOO_BACKEND=triton`` route the ops to their Triton path on CPU tensors), so what is timed is the
Python work around the kernels: checks, planning, caches, allocations, autograd. Outputs are garbage;
only the time counts. The reference is the same call into PyTorch (SDPA with the bool mask, eager
norms and softmax) on shapes so small that its CPU kernels cost little: ratios > 1 mean ours costs
less host time. Our dense attention path runs SDPA itself (its row includes that CPU kernel).
Rows: microseconds per call (the best of 5 repeats of a timed loop), printed as a table; ``--out [DIR]``
also writes them to ``DIR/<date>-cpu-host-time.json`` (DIR defaults to ``benchmarks/results/``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
os.environ["BLOCKZOO_BACKEND"] = "triton"

import torch
import torch.nn.functional as F
import triton
from common import RESULTS, command, print_table, row

from blockzoo.ops import layer_norm, masked_attention, rms_norm, softmax
from blockzoo.ops.triton import launch

launch.launch = lambda *args, **kwargs: None  # every op module calls it through the module: one place to stub
L, D = 32, 32  # tiny: the peer's CPU kernels and our dense path's SDPA stay small


def per_call_us(fn: Callable[[], object], number: int = 2000) -> float:
    fn()  # planning and caches
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def fwd_bwd(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], None]:
    grad = torch.randn_like(fn(*inputs))

    def step() -> None:
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(grad)
    return step


def attention_rows() -> list[dict]:
    torch.manual_seed(0)
    mask = torch.rand(L, L) < 0.3
    mask[:, 0] = True  # no empty rows: the peer's answer is defined
    qkv = [torch.randn(1, 1, L, D) for _ in range(3)]
    qkv_g = [t.clone().requires_grad_() for t in qkv]
    rows = []
    for mode, args in (("fwd", qkv), ("fwd+bwd", qkv_g)):
        def peer_fn(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        peer = per_call_us(partial(peer_fn, *args) if mode == "fwd" else fwd_bwd(peer_fn, *args))
        for path in ("dense", "block_sparse", "csr"):
            def ours_fn(q, k, v, path=path):
                return masked_attention(q, k, v, mask, path=path)
            ours = per_call_us(partial(ours_fn, *args) if mode == "fwd" else fwd_bwd(ours_fn, *args))
            rows.append(row(f"masked_attention {mode} [{path} forced] (us)", "sdpa_bool", peer, ours))
    return rows


def norm_rows() -> list[dict]:
    n = 32
    x = torch.randn(4, n, requires_grad=True)
    w, b = torch.randn(n, requires_grad=True), torch.randn(n, requires_grad=True)
    cases = {
        "softmax": (lambda t: softmax(t, dim=-1), lambda t: torch.softmax(t, dim=-1), (x,)),
        "layer_norm": (lambda t, w, b: layer_norm(t, (n,), w, b), lambda t, w, b: F.layer_norm(t, (n,), w, b),
                       (x, w, b)),
        "rms_norm": (lambda t, w: rms_norm(t, (n,), w), lambda t, w: F.rms_norm(t, (n,), w), (x, w)),
    }
    return [row(f"{name} fwd+bwd (us)", "eager", per_call_us(fwd_bwd(peer, *args)), per_call_us(fwd_bwd(ours, *args)))
            for name, (ours, peer, args) in cases.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--out", nargs="?", const=RESULTS, default=None, type=Path, metavar="DIR",
                        help="write the rows to DIR/<date>-cpu-host-time.json (DIR: benchmarks/results/ when "
                             "omitted); without --out nothing is written")
    args = parser.parse_args()
    torch.set_num_threads(1)  # host time of one Python thread; the peer's CPU kernels stay small
    rows = attention_rows() + norm_rows()
    print_table(rows)
    if args.out is None:
        return
    today = datetime.date.today().isoformat()
    meta = {"date": today, "device": f"CPU host ({platform.processor() or platform.machine()}), launches stubbed",
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "unit": "microseconds per call in peer_ms / ours_ms", "command": command()}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{today}-cpu-host-time.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
