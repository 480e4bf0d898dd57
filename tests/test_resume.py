"""Resume after a simulated kill reproduces the uninterrupted losses exactly; checkpoints reload bit for bit;
a non-finite loss stops the run and keeps the last good checkpoint."""
import json
from pathlib import Path

import pytest
import torch

import blockzoo
from blockzoo.tasks import build_task
from blockzoo.trainer import NonFiniteLossError, run
from blockzoo.trainer.checkpoint import STATE_FILE
from blockzoo.trainer.metrics import read_metrics

# dropout > 0 so that resuming must restore the RNG state as well
TINY = ["task=bytes_lm", "task.seq_len=32", "task.max_bytes=300000", "model.dim_model=32", "model.num_layers=2",
        "model.num_heads=2", "model.max_seq_len=32", "model.dropout=0.1", "trainer.batch_size=4",
        "trainer.steps=8", "trainer.warmup_steps=2", "trainer.log_every=1", "trainer.eval_every=4",
        "trainer.eval_batches=1", "trainer.checkpoint_every=3", "trainer.progress=false", "trainer.sample_tokens=0"]


def losses(out: Path) -> dict[int, tuple]:
    return {r["step"]: (r.get("loss"), r.get("lr"), r.get("val_loss")) for r in read_metrics(out) if not r.get("final")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    result = run(blockzoo.compose(TINY), out)
    return out, result


def test_resume_after_kill_reproduces_losses_exactly(uninterrupted, tmp_path):
    full, _ = uninterrupted
    killed = run(blockzoo.compose([*TINY, "trainer.stop_after=5"]), tmp_path)
    assert killed.final is None
    assert torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=True)["step"] == 3
    assert max(losses(tmp_path)) == 5  # the killed run logged steps past its checkpoint
    resumed = run(blockzoo.compose([*TINY, "trainer.resume=true"]), tmp_path)
    assert resumed.final is not None and resumed.final["step"] == 8
    expected, got = losses(full), losses(tmp_path)
    assert sorted(got) == list(range(9)) and got == expected  # exact equality, not a tolerance
    finals = [r for r in read_metrics(tmp_path) if r.get("final")]
    assert len(finals) == 1 and finals[0]["val_loss"] == read_metrics(full)[-1]["val_loss"]


def test_checkpoint_reloads_bit_for_bit(uninterrupted):
    out, result = uninterrupted
    loaded = blockzoo.load(out / "checkpoint")
    trained = result.model.eval()
    loaded.eval()
    tokens = build_task(blockzoo.compose(TINY)).batch("val", 0, 3)["tokens"]
    with torch.no_grad():
        assert torch.equal(loaded(tokens), trained(tokens))
    config = json.loads(json.dumps(loaded.to_config()))
    assert config["vocab_size"] == 256 and config["dropout"] == 0.1


def test_final_metrics_and_config_written(uninterrupted):
    out, result = uninterrupted
    final = read_metrics(out)[-1]
    assert final["final"] and final["step"] == 8 and final == json.loads(json.dumps(result.final))
    for key in ("val_loss", "val_accuracy", "tokens_per_s", "peak_memory_mb", "params"):
        assert final[key] is not None and final[key] > 0
    saved = blockzoo.config.OmegaConf.load(out / "config.yaml")
    assert saved.model.vocab_size == 256 and saved.trainer.steps == 8


def test_resume_of_a_finished_run_changes_nothing(uninterrupted, tmp_path):
    first = run(blockzoo.compose([*TINY, "trainer.steps=3", "trainer.eval_every=0"]), tmp_path)
    again = run(blockzoo.compose([*TINY, "trainer.steps=3", "trainer.eval_every=0", "trainer.resume=true"]), tmp_path)
    assert again.final["step"] == 3 and again.final["val_loss"] == first.final["val_loss"]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 3]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = blockzoo.compose([*TINY, "trainer.lr=1e30", "trainer.warmup_steps=0", "trainer.checkpoint_every=1",
                            "model.dropout=0.0"])
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss (nan|inf) at step (\d+)") as err:
        run(cfg, tmp_path)
    bad_step = int(err.value.args[0].split("at step ")[1].split(";")[0])
    saved = torch.load(tmp_path / "checkpoint" / STATE_FILE, weights_only=True)["step"]
    assert saved == bad_step - 1 and f"step {saved}" in str(err.value)
    blockzoo.load(tmp_path / "checkpoint")  # still a loadable checkpoint
