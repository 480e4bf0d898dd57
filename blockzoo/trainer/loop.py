"""The training loop: data by step index, AdamW + warm-up/cosine, clipping, autocast, eval, checkpoints, resume."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from blockzoo import ops
from blockzoo.config import ConfigError, TrainerConfig, config_to_dict, validate_config
from blockzoo.ops.backend import BlockzooWarning
from blockzoo.plugins import load_plugins, plugin_modules
from blockzoo.tasks import Task, build_task
from blockzoo.trainer import checkpoint as ckpt
from blockzoo.trainer import runs
from blockzoo.trainer.distributed import DistEnv, setup, teardown, wrap
from blockzoo.trainer.evaluate import evaluate, sample_text
from blockzoo.trainer.metrics import MetricsWriter, PeakMemory, Throughput, flops_per_token, peak_flops
from blockzoo.trainer.model import TrainModule, build_for_task
from blockzoo.trainer.notices import FallbackNotices
from blockzoo.trainer.optim import build_optimizer, build_scheduler
from blockzoo.trainer.profiling import profiled_step
from blockzoo.trainer.progress import Progress

log = logging.getLogger("blockzoo.train")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped before updating the weights."""


@dataclass
class RunResult:
    """What a run leaves: its final metrics (None when stopped by ``trainer.stop_after``) and the trained model."""

    final: dict[str, Any] | None
    model: nn.Module
    out_dir: Path


def trainer_config(cfg: Any) -> TrainerConfig:
    """Validate ``cfg.trainer`` into a :class:`TrainerConfig` (types, keys and values)."""
    return validate_config(TrainerConfig, config_to_dict(cfg), "trainer")


def threads(count: int) -> str:
    return f"{count} CPU thread{'s' if count != 1 else ''}"


def default_threads() -> int:
    """OMP_NUM_THREADS when set, else the cores this process may run on (not the machine's)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def runs_in_bf16(precision: str, device: torch.device) -> bool:
    """bf16 on CUDA ('auto') or when asked ('bf16'); fp32 otherwise."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast when the run is in bf16; otherwise no autocast."""
    if runs_in_bf16(precision, device):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def run(cfg: DictConfig, out_dir: str | Path, earlier_runs: str | None = None) -> RunResult:
    """Train the model ``cfg`` describes on its task, writing metrics, config and checkpoints to ``out_dir``.

    ``earlier_runs``: a glob of earlier run folders where ``trainer.resume`` looks for the newest run of the
    same config when ``out_dir`` has no checkpoint (the CLI passes its ``hydra.run.dir`` pattern)."""
    tcfg = trainer_config(cfg.trainer)
    torch.set_num_threads(tcfg.threads or default_threads())
    load_plugins(plugin_modules(cfg.get("plugins")))
    env = setup(tcfg.strategy, tcfg.device, tcfg.dist_backend)
    try:
        out_dir = Path(env.gather_objects(str(out_dir))[0])  # rank 0's folder (timestamps may differ per rank)
        if env.is_main:
            log.info(f"outputs go to {out_dir}/ (metrics.jsonl, config.yaml, checkpoint/)")
        # trainer.backend forces the ops' path for this run ('auto' leaves BLOCKZOO_BACKEND in charge)
        with ops.force(tcfg.backend) if tcfg.backend != "auto" else contextlib.nullcontext():
            return Run(cfg, tcfg, env, out_dir, earlier_runs).train()
    finally:
        teardown(env)


class Run:
    """One training run's state: model, optimizer, schedule, task and output files."""

    def __init__(self, cfg: DictConfig, tcfg: TrainerConfig, env: DistEnv, out_dir: Path,
                 earlier_runs: str | None = None):
        self.tcfg, self.env, self.out_dir, self.earlier_runs = tcfg, env, out_dir, earlier_runs
        self.memory = PeakMemory(env.device)
        self.notices = FallbackNotices(tcfg.warnings, env.device, self.info)
        if env.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        self.task: Task = build_task(cfg.task)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.cfg, self.model = build_for_task(cfg, self.task)
        self.model.to(env.device)
        torch.manual_seed(cfg.seed + env.rank)  # separate dropout streams per rank
        self.num_params = sum(p.numel() for p in self.model.parameters())
        module = TrainModule(self.model)
        if tcfg.compile:
            module.compile()
        self.module = wrap(module, env, bf16=runs_in_bf16(tcfg.precision, env.device))
        self.optimizer = build_optimizer(self.module, tcfg, env.device)
        self.scheduler = build_scheduler(self.optimizer, tcfg)
        self.autocast = autocast_for(tcfg.precision, env.device)
        self.ckpt_dir = out_dir / ckpt.LATEST
        self.metrics = MetricsWriter(out_dir, env.is_main)
        m = self.cfg.model
        self.flops_per_token = flops_per_token(self.num_params, m.num_layers, m.dim_model, self.task.cfg.seq_len)
        self.peak_flops = peak_flops(env.device)
        self.step = 0
        self.ckpt_step: int | None = None
        self.info(f"model {m.name} ({self.num_params:,} parameters), task {self.task.cfg.name}: {tcfg.steps} steps "
                  f"of {tcfg.batch_size} sequences on {env.device.type} ({threads(torch.get_num_threads())})")
        for line in getattr(self.model, "layer_lines", lambda: [])():  # a per-layer pattern, block by block
            self.info(line)

    # -- setup ---------------------------------------------------------------------------------
    def restore(self) -> None:
        """With ``trainer.resume``, continue from the newest whole checkpoint of the output folder or, when it has
        none, of the newest earlier run of the same config; else start fresh."""
        folder = self.find_checkpoint() if self.tcfg.resume else None
        if folder is not None:
            self.check_same_model(folder)
            self.step = ckpt.load_checkpoint(folder, self.module, self.optimizer, self.scheduler, self.env)
            self.ckpt_step = self.step
            self.info(f"resumed from {folder} at step {self.step}")
        elif self.tcfg.resume:
            where = f" or in an earlier run of this config ({self.earlier_runs})" if self.earlier_runs else ""
            self.info(f"trainer.resume: no checkpoint in {self.out_dir}{where}; starting from step 0")
        self.metrics.start(self.step if folder is not None else None, folder.parent if folder is not None else None)
        if self.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_leftovers(self.out_dir)  # of checkpoint writes a kill interrupted
            OmegaConf.save(self.cfg, self.out_dir / runs.CONFIG_FILE, resolve=True)

    def find_checkpoint(self) -> Path | None:
        """Rank 0 finishes interrupted checkpoint writes and picks the checkpoint; every rank gets its folder."""
        found = None
        if self.env.is_main:
            ckpt.recover(self.out_dir)
            found = ckpt.resumable(self.out_dir) or self.earlier_run_checkpoint()
        folder = self.env.gather_objects(None if found is None else str(found))[0]
        return None if folder is None else Path(folder)

    def earlier_run_checkpoint(self) -> Path | None:
        """The newest whole checkpoint among the earlier runs (newest first) whose config matches this run's."""
        if not self.earlier_runs:
            return None
        for run_dir in runs.matching_runs(self.earlier_runs, self.cfg, exclude=self.out_dir):
            ckpt.recover(run_dir)
            found = ckpt.resumable(run_dir)
            if found is not None:
                return found
        return None

    def check_same_model(self, folder: Path) -> None:
        """Refuse to resume a checkpoint of another model, unless ``trainer.resume_allow_model_change``."""
        changes = runs.differences(ckpt.saved_model_config(folder), self.model.to_config(), "model")
        if not changes:
            return
        listing = "\n  ".join(changes)
        if not self.tcfg.resume_allow_model_change:
            raise ConfigError(f"trainer.resume: this run's model differs from the checkpoint's in {folder} "
                              f"(checkpoint -> this run):\n  {listing}\nRun with the checkpoint's model config, or "
                              "pass trainer.resume_allow_model_change=true to load its weights into this model anyway")
        if self.env.is_main:
            warnings.warn(f"trainer.resume_allow_model_change: loading {folder} into a model that differs "
                          f"(checkpoint -> this run):\n  {listing}", BlockzooWarning)

    def info(self, message: str) -> None:
        if self.env.is_main:
            log.info(message)

    # -- one step ------------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step on batch number ``step``; returns the (global mean) loss."""
        batch = self.env.shard(self.task.batch("train", self.step, self.tcfg.batch_size))
        with self.autocast():
            loss = self.module(batch)
        value = self.env.mean(loss.detach().float()).item()
        if not math.isfinite(value):
            where = (f"the last good checkpoint (step {self.ckpt_step}) is in {self.ckpt_dir}"
                     if self.ckpt_step is not None else "no checkpoint was written yet")
            raise NonFiniteLossError(f"non-finite loss {value} at step {self.step + 1}; stopped before updating "
                                     f"the weights ({where}). Lower trainer.lr or check the data.")
        loss.backward()
        if self.tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.tcfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return value

    def validate(self) -> dict[str, float]:
        loss, acc = evaluate(self.module, self.task, self.env, self.tcfg.eval_batches, self.tcfg.batch_size,
                             self.autocast)
        return {"val_loss": loss, "val_accuracy": acc}

    def save(self) -> nn.Module | None:
        plain = ckpt.save_checkpoint(self.out_dir, self.module, self.model, self.optimizer, self.scheduler,
                                     self.step, self.env)
        self.ckpt_step = self.step
        return plain

    # -- the loop ------------------------------------------------------------------------------
    def train(self) -> RunResult:
        with self.notices:
            return self._train()

    def _train(self) -> RunResult:
        t = self.tcfg
        self.restore()
        if self.step == 0 and t.eval_every:
            self.metrics.write({"step": 0, **self.validate()})
        self.notices.flush()
        first = self.task.batch("train", 0, t.batch_size)
        tokens = first["tokens"].numel() if "tokens" in first else t.batch_size  # images count one per sample
        window = Throughput()
        total = Throughput()
        loss, val = float("nan"), {}
        show = self.info if self.env.is_main else None
        with Progress(t.steps, self.step, t.log_every, t.progress, show) as progress:
            while self.step < t.steps:
                lr = self.optimizer.param_groups[0]["lr"]
                tick = time.perf_counter()
                if self.step + 1 == t.profile_step:
                    with profiled_step(self.env.device, self.env.rank, self.out_dir, self.env.gather_objects):
                        loss = self.train_step()
                else:
                    loss = self.train_step()
                self.notices.flush()
                step, last = self.step, self.step == t.steps
                log_now = step == 1 or step % t.log_every == 0 or last
                if log_now and self.env.device.type == "cuda":
                    torch.cuda.synchronize(self.env.device)
                window.add(tokens, time.perf_counter() - tick)
                record: dict[str, Any] = {}
                if log_now:
                    record = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": window.rate()}
                    if self.peak_flops:
                        record["mfu"] = self.mfu(window.rate())
                    total.merge(window)
                    window = Throughput()
                so_far = Throughput(total.tokens + window.tokens, total.seconds + window.seconds).rate()
                progress.update(step, loss, so_far, self.mfu(so_far))
                if (t.eval_every and step % t.eval_every == 0) or last:
                    val = self.validate()
                    record.update(step=step, **val)
                    self.info(f"step {step}/{t.steps}: val_loss {val['val_loss']:.4f}, "
                              f"val_accuracy {val['val_accuracy']:.3f}")
                if record:
                    self.metrics.write(record)
                if t.checkpoint_every and step % t.checkpoint_every == 0 and not last:
                    self.save()
                if t.stop_after and step == t.stop_after and not last:
                    self.info(f"stopped after step {step} (trainer.stop_after); resume with trainer.resume=true")
                    return RunResult(None, self.model, self.out_dir)
        return self.finish(loss, val, total.rate())

    def mfu(self, tokens_per_s: float | None) -> float | None:
        """Model FLOPs utilization at ``tokens_per_s`` (None off a GPU of known peak)."""
        if not (self.peak_flops and tokens_per_s):
            return None
        return tokens_per_s * self.flops_per_token / (self.peak_flops * self.env.world_size)

    def finish(self, loss: float, val: dict[str, float], tokens_per_s: float | None) -> RunResult:
        """Final checkpoint, final metrics line and (LM tasks) a generated sample."""
        plain = self.save()
        final = {"final": True, "step": self.step, "loss": loss, **(val or self.validate()),
                 "tokens_per_s": tokens_per_s, "peak_memory_mb": self.memory.mib(),
                 "peak_memory_kind": self.memory.kind, "params": self.num_params}
        self.metrics.write(final)
        if plain is not None:
            device = next(plain.parameters()).device
            text = sample_text(plain, self.task, self.tcfg.sample_tokens, int(self.cfg.seed), device)
            if text is not None:
                self.info(f"sample:\n{text}")
        self.notices.flush()
        self.info(summary(final, self.out_dir))
        return RunResult(final, self.model, self.out_dir)


def summary(final: dict[str, Any], out_dir: Path) -> str:
    """The run's last line: where its outputs are and what it reached, each figure labelled."""
    memory = {"cuda_allocated": "GPU memory held by tensors", "cpu_resident": "resident memory"}
    parts = [f"val_loss {final['val_loss']:.4f}", f"val_accuracy {final['val_accuracy']:.3f}"]
    if final["tokens_per_s"]:
        parts.append(f"{final['tokens_per_s']:,.0f} tok/s (mean over training steps)")
    parts.append(f"peak {final['peak_memory_mb']:,.0f} MiB ({memory[final['peak_memory_kind']]} above the run's start)")
    return f"done: {final['step']} steps; {', '.join(parts)}; outputs in {out_dir}/"
