"""Where the time of a Triton-parts case goes: GPU kernel time (torch.profiler) against host time.

For each case prints the ``do_bench`` median, the summed device time of its kernels per call, the
host time to enqueue one call, and the kernels themselves. A do_bench median well above the kernel
time means the GPU waits for the host. Usage on a GPU: ``python benchmarks/profile_parts.py``.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F
from common import bench
from torch.profiler import ProfilerActivity, profile

import blockzoo
from blockzoo.ops.triton import launcher

DEVICE = "cuda"


def host_ms(fn: Callable[[], object], calls: int = 50) -> float:
    """Host time to enqueue one call (the GPU queue never fills at this count)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e3


def kernels(fn: Callable[[], object], calls: int = 10) -> tuple[float, list[tuple[str, float]]]:
    """(device ms per call, [(kernel, ms per call)]) from torch.profiler."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name] = per.get(e.name, 0.0) + e.device_time / 1e3 / calls
    top = sorted(per.items(), key=lambda kv: -kv[1])
    return sum(per.values()), top


def report(name: str, fn: Callable[[], object]) -> None:
    dev, top = kernels(fn)
    print(f"{name}: do_bench {bench(fn):.4f} ms | kernels {dev:.4f} ms | host {host_ms(fn):.4f} ms", flush=True)
    for k, ms in top[:10]:
        print(f"    {ms:.4f} ms  {k[:110]}")


def step(fn: Callable, inputs: list[torch.Tensor], dy: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.autograd.grad(fn(*inputs), inputs, dy)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " ")).parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_parts.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    torch._dynamo.config.cache_size_limit = 64
    for fast in (False, True):
        launcher.FAST = fast
        print(f"=== launch cache {'on' if fast else 'off'}")
        cases()


def cases() -> None:
    softmax_cases()
    norm_and_dropout_cases()


def softmax_cases() -> None:
    x = torch.randn(16384, 4096, device=DEVICE, dtype=torch.float16, requires_grad=True)
    dy = torch.randn_like(x)
    report("softmax fwd ours", lambda: blockzoo.ops.softmax(x.detach()))
    report("softmax fwd+bwd eager", step(lambda t: torch.softmax(t, -1), [x], dy))
    report("softmax fwd+bwd ours", step(lambda t: blockzoo.ops.softmax(t), [x], dy))
    xc = torch.randn(4, 4096, 4096, device=DEVICE, dtype=torch.float16)
    report("causal softmax fwd ours", lambda: blockzoo.ops.softmax(xc, causal=True))
    report("plain softmax fwd ours (same shape)", lambda: blockzoo.ops.softmax(xc))


def norm_and_dropout_cases() -> None:
    bf16 = torch.bfloat16
    x = torch.randn(32768, 4096, device=DEVICE, dtype=bf16, requires_grad=True)
    w = torch.randn(4096, device=DEVICE, dtype=bf16, requires_grad=True)
    b = torch.randn(4096, device=DEVICE, dtype=bf16, requires_grad=True)
    dy = torch.randn_like(x)
    report("rms_norm fwd+bwd ours", step(lambda t, w: blockzoo.ops.rms_norm(t, (4096,), w), [x, w], dy))
    report("rms_norm fwd+bwd eager", step(lambda t, w: torch.nn.functional.rms_norm(t, (4096,), w, 1e-6), [x, w], dy))
    report("layer_norm fwd+bwd ours", step(lambda t, w, b: blockzoo.ops.layer_norm(t, (4096,), w, b), [x, w, b], dy))
    report("dropout fwd+bwd ours", step(lambda t, b: blockzoo.ops.dropout_bias_act(t, b, 0.1, "gelu"), [x, b], dy))
    report("dropout fwd+bwd compile", step(torch.compile(lambda t, b: F.dropout(F.gelu(t + b), 0.1)), [x, b], dy))
    report("dropout fwd ours", lambda: blockzoo.ops.dropout_bias_act(x.detach(), b.detach(), 0.1, "gelu"))
    # our ops inside a compiled graph (slower than eager in run 12): the kernel list shows what Inductor adds
    report("layer_norm fwd+bwd ours under torch.compile",
           step(torch.compile(lambda t, w, b: blockzoo.ops.layer_norm(t, (4096,), w, b)), [x, w, b], dy))
    report("dropout fwd+bwd ours under torch.compile",
           step(torch.compile(lambda t, b: blockzoo.ops.dropout_bias_act(t, b, 0.1, "gelu")), [x, b], dy))


if __name__ == "__main__":
    main()
