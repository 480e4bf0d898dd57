"""End-to-end training throughput: GPT-2-small from YAML against the same model written in plain PyTorch.

One run, one GPU: plain eager, plain compiled, blockzoo eager and blockzoo compiled (fullgraph),
tokens/s and peak memory; then seq 4096 with local-window and block-sparse attention configs.
Each step: bf16 autocast forward, loss, backward, fused AdamW step. Usage:
``python benchmarks/bench_e2e.py [--steps 20] [--batch 16] [--quick]``.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import blockzoo
from common import print_table, write_results


# -- the plain model, written here as a user would -----------------------------------------------
class PlainBlock(nn.Module):
    """A GPT-2 block as a user writes it: causal SDPA, or a static ``keep`` mask through SDPA's ``attn_mask``
    (``attention='mask'``) or through ``flex_attention`` with a block mask (``attention='flex'``)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, block_mask=None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if block_mask is not None:
            from torch.nn.attention.flex_attention import flex_attention

            y = flex_attention(q, k, v, block_mask=block_mask)
        elif keep is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, D))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int = 50304, ctx: int = 1024, d: int = 768, layers: int = 12, heads: int = 12,
                 keep: torch.Tensor | None = None, flex: bool = False):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(PlainBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        self.keep, self.block_mask = keep, None
        if keep is not None and flex:  # built once, as a user of flex_attention does (not timed)
            from torch.nn.attention.flex_attention import create_block_mask

            dense = keep.expand(heads, ctx, ctx)
            self.keep = None
            self.block_mask = create_block_mask(lambda b, h, q, kv: dense[h, q, kv], None, heads, ctx, ctx,
                                                device=keep.device)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = batch["tokens"]
        x = self.wte(tokens) + self.wpe.weight[: tokens.shape[1]]
        for b in self.blocks:
            x = b(x, self.keep, self.block_mask)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten())


# -- measurement ----------------------------------------------------------------------------------
def flops_per_token(n_params: int, layers: int, d: int, seq: int) -> float:
    return 6 * n_params + 12 * layers * d * seq


def train_step(model: nn.Module, loss_fn, batch: dict):
    """One full training step (bf16 autocast forward, backward, fused AdamW) as a closure."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(model: nn.Module, loss_fn, batch: dict, steps: int, warmup: int = 3) -> tuple[float, float]:
    """(seconds per step median, peak GiB) of a full training step."""
    step = train_step(model, loss_fn, batch)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30


def profile(label: str, model: nn.Module, batch: dict, steps: int = 3) -> None:
    """Where a step's time goes: wall time against summed kernel time, the top kernels and host ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step = train_step(model, model.loss, batch)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps * 1e3
    kernels = sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3
    print(f"== profile {label}: {wall:.2f} ms per step (profiled), kernels {kernels / steps:.2f} ms per step")
    table = prof.key_averages()
    print(table.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=70))
    print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=70))


def graph_breaks(fn, batch: dict) -> int:
    """Number of graph breaks torch.compile would take on ``fn(batch)``."""
    import torch._dynamo as dynamo

    explanation = dynamo.explain(fn)(batch)
    return explanation.graph_break_count


def build_blockzoo(overrides: list[str]) -> nn.Module:
    cfg = blockzoo.compose(["model=gpt_small", "~task", *overrides])
    return blockzoo.build_model(cfg).cuda()


def dense_keep(model: nn.Module, seq: int) -> torch.Tensor:
    """The (H or 1, L, L) bool keep of a blockzoo model's first attention, causal applied: what its
    sparse path computes, for the plain peers."""
    attention = model.blocks[0].self_attn.attention
    if hasattr(attention, "pattern"):  # block-sparse layouts
        keep = attention.pattern(seq, seq, torch.device("cuda"))
    else:  # a local window: |i - j| <= window_size // 2
        i = torch.arange(seq, device="cuda")
        keep = ((i[:, None] - i[None, :]).abs() <= attention.cfg.window_size // 2)[None]
    return keep & torch.ones(seq, seq, dtype=torch.bool, device="cuda").tril()


TARGETS = {"eager": 1.30, "compiled": 1.10, "flex": 1.10}


def run_pair(label: str, peers: dict[str, nn.Module], ours: nn.Module, batch: dict, steps: int, rows: list,
             tokens: int, modes: tuple[str, ...], flops: float) -> None:
    """Time ``ours`` and each peer in each mode ('eager', 'compiled'); a row per (peer, mode) pair."""
    results = {}
    for mode in modes:
        for name, peer in peers.items():
            fn = peer.loss if mode == "eager" else torch.compile(peer.loss)
            results[f"{name} {mode}"] = measure(peer, fn, batch, steps)
        if mode == "compiled":
            breaks = graph_breaks(ours.loss, batch)
            print(f"{label}: blockzoo graph breaks under torch.compile: {breaks}")
            fn = torch.compile(ours.loss, fullgraph=breaks == 0)
        else:
            fn = ours.loss
        results[f"blockzoo {mode}"] = measure(ours, fn, batch, steps)
    for name, (sec, peak) in results.items():
        print(f"{label} {name:22s} {tokens / sec / 1e3:8.1f}k tok/s  {sec * 1e3:7.2f} ms  peak {peak:6.2f} GiB  "
              f"MFU {mfu(flops, tokens, sec):5.1%}")
    for mode in modes:
        for name in peers:
            peer, ours_name = f"{name} {mode}", f"blockzoo {mode}"
            pm, om = results[peer][0] * 1e3, results[ours_name][0] * 1e3
            target = TARGETS["flex" if "flex" in name else mode]
            rows.append({"case": f"{label} train step ({ours_name})", "peer": peer, "peer_ms": round(pm, 3),
                         "ours_ms": round(om, 3), "ratio": round(pm / om, 3), "frac_ceiling": None,
                         "target": target, "met": pm / om >= target,
                         "peer_peak_GiB": round(results[peer][1], 2), "ours_peak_GiB": round(results[ours_name][1], 2),
                         "ours_tokens_per_s": round(tokens / results[ours_name][0]),
                         "ours_MFU": round(mfu(flops, tokens, results[ours_name][0]), 4)})


PEAK_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100 / H200 SXM


def mfu(flops_per_tok: float, tokens: int, sec: float) -> float:
    """Model FLOP utilisation against the card's dense bf16 peak."""
    return flops_per_tok * tokens / sec / PEAK_BF16_FLOPS


def main() -> None:
    parser = argparse.ArgumentParser(
        description="One training step of gpt_small built from YAML against a plain PyTorch GPT-2 (eager, "
                    "torch.compile, seq 4096 with local / block-sparse attention) on a CUDA GPU; writes "
                    "results/<date>-<device>-e2e.json.")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="skip torch.compile and the seq-4096 runs")
    parser.add_argument("--short-only", action="store_true", help="skip the seq-4096 runs")
    parser.add_argument("--profile", action="store_true",
                        help="only profile one eager step of the plain and the blockzoo gpt_small (no results file)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_e2e.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    torch.manual_seed(0)
    rows: list[dict] = []
    seq = 1024
    tokens = torch.randint(0, 50304, (args.batch, seq), device="cuda")
    batch = {"tokens": tokens, "targets": torch.roll(tokens, -1, 1)}
    plain = PlainGPT().cuda()
    ours = build_blockzoo([])
    n_plain = sum(p.numel() for p in plain.parameters())
    n_ours = sum(p.numel() for p in ours.parameters())
    print(f"parameters: plain {n_plain:,}  blockzoo {n_ours:,}")
    flops = flops_per_token(n_ours, 12, 768, seq)
    if args.profile:
        profile("plain eager", plain, batch)
        profile("blockzoo eager", ours, batch)
        return
    modes = ("eager",) if args.quick else ("eager", "compiled")
    run_pair("gpt_small seq1024", {"plain": plain}, ours, batch, args.steps, rows, args.batch * seq, modes, flops)
    del plain, ours
    if not (args.quick or args.short_only):
        seq = 4096
        b = max(1, args.batch // 4)
        tokens = torch.randint(0, 50304, (b, seq), device="cuda")
        batch = {"tokens": tokens, "targets": torch.roll(tokens, -1, 1)}
        long_ctx = ["model.max_seq_len=4096"]
        for label, extra in [("seq4096 local(256)", ["attention=local", "attention.window_size=256"]),
                             ("seq4096 blocksparse", ["attention=blocksparse"])]:
            try:
                ours = build_blockzoo(long_ctx + extra)
                keep = dense_keep(ours, seq)
                peers = {"plain bool-mask": PlainGPT(ctx=seq, keep=keep).cuda(),
                         "plain flex": PlainGPT(ctx=seq, keep=keep, flex=True).cuda()}
                run_pair(label, peers, ours, batch, max(5, args.steps // 2), rows, b * seq, ("compiled",),
                         flops_per_token(n_ours, 12, 768, seq))
                del ours, peers
            except Exception as e:  # one config failing must not lose the others' figures
                print(f"{label}: FAILED {type(e).__name__}: {e}")
    print_table(rows)
    print("wrote", write_results("e2e", rows))


if __name__ == "__main__":
    main()
