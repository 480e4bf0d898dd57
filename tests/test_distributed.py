"""torchrun + gloo on the CPU: DDP and FSDP2 losses match a single process with the same global batch; a killed
DDP run resumes exactly; a DDP checkpoint loads in a single process; impossible strategies fail clearly."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import blockzoo
from blockzoo.trainer import run
from blockzoo.trainer.distributed import DistEnv, setup

ARGS = ["task=copy", "task.seq_len=16", "model.dim_model=32", "model.num_layers=2", "model.num_heads=2",
        "trainer.batch_size=8", "trainer.steps=4", "trainer.warmup_steps=1", "trainer.log_every=1",
        "trainer.eval_every=2", "trainer.eval_batches=2", "trainer.checkpoint_every=2", "trainer.progress=false"]


def torchrun(args: list[str], out: Path, nproc: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "blockzoo.train", *args, f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"


def metrics(out: Path) -> dict[int, dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in lines if not r.get("final")}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, run(blockzoo.compose(ARGS), out)


def assert_close_losses(got: dict[int, dict], expected: dict[int, dict]) -> None:
    assert sorted(got) == sorted(expected) == list(range(5))
    for step, ref in expected.items():
        for key in ("loss", "val_loss"):
            if ref.get(key) is not None:
                assert got[step][key] == pytest.approx(ref[key], rel=1e-5), (step, key)


@pytest.fixture(scope="module")
def two_process(tmp_path_factory):
    """Run each strategy once (on demand) with two processes; strategy -> output folder."""
    outs: dict[str, Path] = {}

    def get(strategy: str) -> Path:
        if strategy not in outs:
            outs[strategy] = tmp_path_factory.mktemp(strategy)
            torchrun([*ARGS, f"trainer.strategy={strategy}"], outs[strategy])
        return outs[strategy]

    return get


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_losses_match_single_process(strategy, single, two_process):
    out = two_process(strategy)
    assert_close_losses(metrics(out), metrics(single[0]))
    # the checkpoint is unsharded: a plain single-process load gives the same model
    loaded = blockzoo.load(out / "checkpoint").eval()
    tokens = torch.randint(2, 18, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), single[1].model.eval()(tokens), rtol=1e-4, atol=1e-5)


def test_killed_ddp_run_resumes_with_identical_losses(two_process, tmp_path):
    ddp = [*ARGS, "trainer.strategy=ddp"]
    torchrun([*ddp, "trainer.stop_after=3"], tmp_path)
    torchrun([*ddp, "trainer.resume=true"], tmp_path)
    full, resumed = metrics(two_process("ddp")), metrics(tmp_path)
    for r in (*full.values(), *resumed.values()):
        r.pop("tokens_per_s", None)
    assert resumed == full


def test_strategies_without_torchrun_fail_clearly(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    for strategy in ("ddp", "fsdp"):
        with pytest.raises(ValueError, match=f"trainer.strategy={strategy} needs several processes.*torchrun"):
            run(blockzoo.compose([*ARGS, f"trainer.strategy={strategy}"]), "unused")
    with pytest.raises(ValueError, match="trainer.strategy must be one of"):
        setup("dp", "auto", "auto")


def torchrun_env(monkeypatch, world: int) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_impossible_setups_under_torchrun_fail_before_starting(monkeypatch):
    torchrun_env(monkeypatch, 1)
    with pytest.raises(ValueError, match="fsdp with one process"):
        setup("fsdp", "cpu", "auto")
    torchrun_env(monkeypatch, 2)
    with pytest.raises(ValueError, match="nccl needs CUDA GPUs"):
        setup("ddp", "cpu", "nccl")
    with pytest.raises(ValueError, match="strategy=single but torchrun started 2"):
        setup("single", "cpu", "auto")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            setup("ddp", "cuda", "auto")


def test_global_batch_must_split_evenly():
    env = DistEnv("ddp", 1, 3, torch.device("cpu"))
    with pytest.raises(ValueError, match="divisible by the world size 3"):
        env.shard({"tokens": torch.zeros(8, 4)})
    part = DistEnv("ddp", 1, 2, torch.device("cpu")).shard({"tokens": torch.arange(8)[:, None]})
    assert part["tokens"].flatten().tolist() == [4, 5, 6, 7]


def test_fsdp_in_bf16_gathers_bf16_params_and_matches_ddp(two_process, tmp_path):
    """trainer.precision=bf16: FSDP2's MixedPrecisionPolicy (bf16 params, fp32 reduce) tracks DDP's bf16 autocast."""
    bf16 = [*ARGS, "trainer.precision=bf16"]
    torchrun([*bf16, "trainer.strategy=ddp"], tmp_path / "ddp")
    torchrun([*bf16, "trainer.strategy=fsdp"], tmp_path / "fsdp")
    ddp, fsdp = metrics(tmp_path / "ddp"), metrics(tmp_path / "fsdp")
    assert sorted(fsdp) == sorted(ddp) == list(range(5))
    compared = 0
    for step, ref in ddp.items():
        for key in ("loss", "val_loss"):
            if ref.get(key) is not None:
                assert fsdp[step][key] == pytest.approx(ref[key], rel=2e-2), (step, key)
                compared += 1
    assert compared >= 5


def test_fsdp_wrap_uses_bf16_params_and_fp32_reduce_in_bf16_runs(monkeypatch):
    import torch.distributed.fsdp as fsdp_module

    from blockzoo.trainer import distributed

    policies = []
    monkeypatch.setattr(fsdp_module, "fully_shard", lambda module, mp_policy: policies.append(mp_policy) or module)
    model = blockzoo.build_model({"name": "decoder_lm", "vocab_size": 8, "dim_model": 16, "num_heads": 2,
                                  "num_layers": 2, "max_seq_len": 8})
    env = DistEnv("fsdp", 0, 2, torch.device("cpu"))
    distributed.wrap(model, env, bf16=True)
    assert len(policies) == 3  # two blocks, then the root
    assert all(p.param_dtype == torch.bfloat16 and p.reduce_dtype == torch.float32 for p in policies)
    policies.clear()
    distributed.wrap(model, env, bf16=False)
    assert all(p.param_dtype is None and p.reduce_dtype is None for p in policies)
