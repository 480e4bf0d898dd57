"""Where a compiled training step's time goes: plain PyTorch against blockzoo, kernel time per category.

GPT-2-small (batch 16 x 1024, bf16 autocast, fused AdamW), every model under ``torch.compile``:
plain; blockzoo as shipped; blockzoo with every fast op on its PyTorch path (``BLOCKZOO_BACKEND=torch``:
Inductor fuses everything, the cross-entropy materialises the logits); and blockzoo with only the
fused linear cross-entropy and attention kept (norms, activation and dropout on the PyTorch path).
For each: step time (median), peak memory, and one profiled step's kernel time split into GEMM,
attention, Inductor-generated Triton, blockzoo Triton, optimizer and other.
Usage: ``python benchmarks/profile_compiled.py [--steps 20] [--variants plain,ours,torch,hybrid]``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import defaultdict

import torch

CATEGORIES = [("attention", ("flash", "fmha", "attention", "efficient", "sdpa")),  # before gemm: cuDNN's names
              ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "splitk")),
              ("optimizer", ("multi_tensor", "adam", "foreach")),
              ("inductor", ("triton_poi", "triton_red", "triton_per", "triton_tem")),
              ("blockzoo", ("_kernel",))]


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def kernel_breakdown(step, steps: int = 3) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """(ms per step by category, top 12 kernels (name, ms per step)) of ``steps`` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    per_cat: dict[str, float] = defaultdict(float)
    per_kernel: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            ms = e.device_time / 1e3 / steps
            per_cat[category(e.name)] += ms
            per_kernel[e.name[:90]] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]
    return dict(per_cat), top


@contextlib.contextmanager
def torch_paths(names: tuple[str, ...]):
    """Route the named ``blockzoo.ops`` functions to their PyTorch reference for the block's duration."""
    import blockzoo.ops as bops
    from blockzoo.ops import torch_ref

    refs = {"layer_norm": lambda x, shape, w=None, b=None, eps=1e-5: torch_ref.layer_norm(x, tuple(shape), w, b, eps),
            "rms_norm": lambda x, shape, w=None, eps=1e-6: torch_ref.rms_norm(x, tuple(shape), w, eps),
            "dropout_bias_act": lambda x, b=None, p=0.0, act="gelu", training=True, seed=None:
                torch_ref.dropout_bias_act(x, b, p if training else 0.0, act, training),
            "linear_act": lambda x, w, b=None, act="gelu": torch_ref.linear_act(x, w, b, act)}
    saved = {n: getattr(bops, n) for n in names}
    for n in names:
        setattr(bops, n, refs[n])
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(bops, n, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--variants", default="plain,ours,torch,hybrid")
    parser.add_argument("--json", default=None,
                        help="where to write the figures (default: results/<date>-<device>-compiled-step-profile.json)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_compiled.py needs a CUDA GPU")
    from bench_e2e import PlainGPT, build_blockzoo, measure, train_step

    import blockzoo.ops as bops

    torch.manual_seed(0)
    tokens = torch.randint(0, 50304, (args.batch, 1024), device="cuda")
    batch = {"tokens": tokens, "targets": torch.roll(tokens, -1, 1)}
    out = {}
    for variant in args.variants.split(","):
        ctx = contextlib.nullcontext()
        if variant == "plain":
            model = PlainGPT().cuda()
        else:
            model = build_blockzoo([])
            if variant == "torch":
                ctx = bops.force("torch")
            elif variant == "hybrid":
                ctx = torch_paths(("layer_norm", "rms_norm", "dropout_bias_act", "linear_act"))
        with ctx:
            torch._dynamo.reset()
            fn = torch.compile(model.loss)
            t0 = time.perf_counter()
            sec, peak = measure(model, fn, batch, args.steps)
            cats, top = kernel_breakdown(train_step(model, fn, batch))
        total = sum(cats.values())
        out[variant] = {"ms": sec * 1e3, "peak_GiB": peak, "kernel_ms": total, "by_category": cats, "top": top,
                        "wall_s_incl_compile": time.perf_counter() - t0}
        print(f"== {variant:7s} step {sec * 1e3:7.2f} ms  peak {peak:5.2f} GiB  kernels {total:6.2f} ms  " +
              "  ".join(f"{k} {v:5.2f}" for k, v in sorted(cats.items(), key=lambda kv: -kv[1])), flush=True)
        for name, ms in top:
            print(f"     {ms:6.3f} ms  {name}")
        del model, fn
        torch.cuda.empty_cache()
    import datetime

    import triton
    from common import RESULTS, device_slug

    today = datetime.date.today().isoformat()
    path = args.json or RESULTS / f"{today}-{device_slug()}-compiled-step-profile.json"
    meta = {"date": today, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda, "command": "python " + " ".join(sys.argv)}
    with open(path, "w") as f:
        json.dump({"meta": meta, "variants": out}, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
