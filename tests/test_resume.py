"""Resume after a simulated kill reproduces the uninterrupted losses exactly, also after a kill inside the checkpoint
swap, a damaged checkpoint or a torn metrics line; resume finds the newest run of the same config and refuses another
model; checkpoints reload bit for bit; a non-finite loss stops the run and keeps the last good checkpoint."""
import json
import logging
from pathlib import Path

import pytest
import torch

import blockzoo
from blockzoo.tasks import build_task
from blockzoo.trainer import NonFiniteLossError, run
from blockzoo.trainer import checkpoint as ckpt
from blockzoo.trainer.checkpoint import STATE_FILE
from blockzoo.trainer.metrics import read_metrics
from cli_helpers import TINY as CLI_TINY
from cli_helpers import check, run_app

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


# -- faults: kills inside the checkpoint swap, damaged checkpoints, torn metrics, another model -------------------
class Killed(BaseException):
    """Stands for a SIGKILL (tests/test_checkpoint.py kills a real process at every step of the swap)."""


def test_kill_between_the_checkpoint_renames_resumes_the_newest(uninterrupted, tmp_path, monkeypatch):
    """Killed after moving checkpoint/ to checkpoint.previous/ and before moving the new one in: the next start
    finishes the swap and resumes from the new checkpoint, with every earlier metrics line kept."""
    real_rename = ckpt.rename

    def rename(src: Path, dst: Path) -> None:
        publishing = dst.name == ckpt.LATEST and src.parent.name.startswith(ckpt.TMP_PREFIX)
        if publishing and (dst.parent / ckpt.PREVIOUS).exists():
            raise Killed
        real_rename(src, dst)

    with monkeypatch.context() as mp:
        mp.setattr(ckpt, "rename", rename)
        with pytest.raises(Killed):
            run(blockzoo.compose(TINY), tmp_path)  # checkpoint 3 written, killed while publishing 6
    assert not (tmp_path / ckpt.LATEST).exists() and ckpt.verify(tmp_path / ckpt.PREVIOUS) == 3
    assert max(losses(tmp_path)) == 6
    resumed = run(blockzoo.compose([*TINY, "trainer.resume=true"]), tmp_path)
    assert resumed.final["step"] == 8 and losses(tmp_path) == losses(uninterrupted[0])
    assert not list(tmp_path.glob(".checkpoint.*"))


def test_damaged_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path):
    run(blockzoo.compose([*TINY, "trainer.stop_after=7"]), tmp_path)  # checkpoints 3 and 6
    weights = tmp_path / ckpt.LATEST / ckpt.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(blockzoo.BlockzooWarning, match=r"model\.safetensors: sha256 differs.*resuming from .*previous"):
        resumed = run(blockzoo.compose([*TINY, "trainer.resume=true"]), tmp_path)
    assert resumed.final["step"] == 8 and losses(tmp_path) == losses(uninterrupted[0])


def test_torn_last_metrics_line_is_dropped_with_a_warning(uninterrupted, tmp_path):
    run(blockzoo.compose([*TINY, "trainer.stop_after=5"]), tmp_path)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')
    with pytest.warns(blockzoo.BlockzooWarning, match="torn last line"):
        resumed = run(blockzoo.compose([*TINY, "trainer.resume=true"]), tmp_path)
    assert resumed.final["step"] == 8 and losses(tmp_path) == losses(uninterrupted[0])


def test_resume_with_another_model_lists_the_differences(tmp_path):
    run(blockzoo.compose([*TINY, "trainer.stop_after=4"]), tmp_path)
    other = [*TINY, "attention=local", "attention.window_size=8", "trainer.resume=true"]
    with pytest.raises(blockzoo.ConfigError, match=r"(?s)model\.attention\.name: 'scaled_dot_product' -> 'local'.*"
                                                   r"model\.attention\.window_size: None -> 8.*"
                                                   r"trainer\.resume_allow_model_change=true"):
        run(blockzoo.compose(other), tmp_path)
    assert max(losses(tmp_path)) == 4  # nothing was touched
    with pytest.warns(blockzoo.BlockzooWarning, match="resume_allow_model_change"):
        resumed = run(blockzoo.compose([*other, "trainer.resume_allow_model_change=true"]), tmp_path)
    assert resumed.final["step"] == 8


def test_resume_finds_the_newest_earlier_run_of_the_same_config(uninterrupted, tmp_path, caplog):
    outputs = tmp_path / "outputs"
    run(blockzoo.compose([*TINY, "trainer.stop_after=5"]), outputs / "a")  # checkpoint 3
    run(blockzoo.compose([*TINY, "seed=1", "trainer.stop_after=4"]), outputs / "b")  # newer, another config
    caplog.set_level(logging.INFO, logger="blockzoo.train")
    resumed = run(blockzoo.compose([*TINY, "trainer.resume=true"]), outputs / "c", earlier_runs=str(outputs / "*"))
    assert f"resumed from {outputs / 'a' / ckpt.LATEST} at step 3" in caplog.text
    assert resumed.final["step"] == 8 and losses(outputs / "c") == losses(uninterrupted[0])
    assert max(losses(outputs / "a")) == 5  # the earlier run is left as it was


def test_cli_resume_without_a_run_dir_continues_the_killed_run(tmp_path):
    args = [*CLI_TINY, "task=copy", "task.seq_len=16", "trainer.steps=4", "trainer.checkpoint_every=2",
            "trainer.eval_every=0", "trainer.log_every=1"]
    check(run_app([*args, "trainer.stop_after=3"], cwd=tmp_path))
    (killed,) = (tmp_path / "outputs").glob("*/*")
    proc = check(run_app([*args, "trainer.resume=true"], cwd=tmp_path))
    assert f"resumed from {killed.resolve() / ckpt.LATEST} at step 2" in proc.stdout
    (resumed,) = set((tmp_path / "outputs").glob("*/*")) - {killed}
    assert [r["step"] for r in read_metrics(resumed)] == [1, 2, 3, 4, 4]
