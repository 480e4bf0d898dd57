"""Several-GPU scaling of the real training app (suite "scaling"): gpt_small from YAML, trained by
``python -m blockzoo.train`` on one GPU and under ``torchrun`` with DDP and FSDP2 (NCCL) on N GPUs.

Weak scaling: every process gets the same per-GPU batch (16 x 1024 tokens), so the global batch
grows with N. Each run's tokens/s is the median of its logged windows after the first ``--skip``
steps (start-up, allocator and NCCL warm-up excluded). Rows (shared results format): ``peer`` is N
independent single-GPU runs (N x the 1-GPU tokens/s, expressed as the per-step time of one GPU),
``ours`` the N-GPU run's per-step time, so ``ratio`` is the scaling efficiency (1.0 = linear).
Each configuration runs eager and compiled (``trainer.compile=true``), in bf16 (``trainer=gpu``: autocast;
FSDP2 gathers bf16 parameters and reduces in fp32). One step of every N-GPU run is profiled
(``trainer.profile_step``): its share of time in NCCL kernels, and the part no compute overlapped.
Usage on a machine with N >= 2 GPUs: ``python benchmarks/bench_scaling.py [--steps 60] [--modes eager,compiled]``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import print_table, row, write_results

PER_GPU_BATCH, SEQ = 16, 1024


def train(nproc: int, strategy: str, steps: int, out: Path, extra: list[str]) -> list[dict]:
    """Run the app; return its metrics.jsonl records."""
    args = ["model=gpt_small", "trainer=gpu", f"task.seq_len={SEQ}", f"trainer.steps={steps}",
            f"trainer.batch_size={PER_GPU_BATCH * nproc}", "trainer.log_every=5", "trainer.eval_every=0",
            "trainer.checkpoint_every=0", "trainer.sample_tokens=0", "trainer.progress=false",
            "trainer.warmup_steps=10", f"trainer.strategy={strategy}", f"hydra.run.dir={out}", *extra]
    launcher = [sys.executable, "-m", "blockzoo.train"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "blockzoo.train"]
    proc = subprocess.run([*launcher, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy} x{nproc} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def profile_summary(out: Path) -> dict:
    """Rank 0's summary of the profiled step (``profile.json``), or {} when the run wrote none."""
    path = out / "profile.json"
    return json.loads(path.read_text())["ranks"][0] if path.exists() else {}


def tokens_per_s(records: list[dict], skip: int) -> tuple[float, float]:
    """(median tokens/s of the logged windows after ``skip`` steps, peak memory MiB of the run)."""
    rates = [r["tokens_per_s"] for r in records if not r.get("final") and r.get("tokens_per_s") and r["step"] > skip]
    final = next(r for r in records if r.get("final"))
    return statistics.median(rates), final.get("peak_memory_mb") or float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Tokens/s of python -m blockzoo.train (gpt_small) on 1 GPU against torchrun DDP / FSDP on "
                    "every GPU (at least 2); writes results/<date>-<device>-scaling.json. Other arguments "
                    "go to the training app as overrides.")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=15)
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--strategies", default="ddp,fsdp")
    parser.add_argument("--modes", default="eager,compiled", help="eager, compiled or both")
    args, extra = parser.parse_known_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_scaling.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    n = args.gpus
    if n < 2:
        print(f"needs at least 2 GPUs, found {n}")
        return 1
    rows: list[dict] = []
    tokens_per_step = PER_GPU_BATCH * SEQ
    profile_at = args.skip + 5
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            flags = [*extra, f"trainer.compile={'true' if mode == 'compiled' else 'false'}"]
            out1 = Path(tmp) / f"single-{mode}"
            one, mem1 = tokens_per_s(train(1, "single", args.steps, out1, flags), args.skip)
            print(f"{mode} 1 GPU: {one:,.0f} tokens/s, peak {mem1:.0f} MiB", flush=True)
            for strategy in args.strategies.split(","):
                out = Path(tmp) / f"{strategy}-{mode}"
                many, mem = tokens_per_s(train(n, strategy, args.steps, out, [*flags, f"trainer.profile_step={profile_at}"]),
                                         args.skip)
                prof = profile_summary(out)
                eff = many / (n * one)
                print(f"{mode} {strategy} x{n}: {many:,.0f} tokens/s, peak {mem:.0f} MiB/GPU, scaling efficiency "
                      f"{eff:.3f}, communication {prof.get('communication_share')} of the profiled step "
                      f"(exposed {prof.get('exposed_communication_share')})", flush=True)
                rows.append(row(f"gpt_small train step {mode} {strategy} {n} GPUs (NCCL, bf16), {PER_GPU_BATCH}x{SEQ} "
                                "tokens per GPU", f"{n} x 1 GPU", tokens_per_step / one * 1e3,
                                tokens_per_step * n / many * 1e3, target=0.9))
                rows[-1].update(tokens_per_s=round(many), single_gpu_tokens_per_s=round(one), peak_memory_mb=round(mem),
                                single_gpu_peak_memory_mb=round(mem1), profile=prof)
    print_table(rows)
    print("results:", write_results("scaling", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
