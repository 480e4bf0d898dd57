"""The training app with ``task.pack=true``: packed rows train end to end; an attention that cannot run packed
documents is refused, by name, before the first step."""
from cli_helpers import TINY, check, run_app

PACKED = [*TINY, "task=bytes_lm", "task.pack=true", "task.seq_len=32", "task.max_bytes=200000",
          "trainer.eval_every=0", "trainer.steps=2"]


def test_packed_bytes_lm_trains(tmp_path):
    out = tmp_path / "run"
    proc = check(run_app([*PACKED, "embedding=rotary", f"hydra.run.dir={out}"], cwd=tmp_path))
    assert (out / "metrics.jsonl").exists(), proc.stdout


def test_packing_refused_for_an_attention_without_masks(tmp_path):
    proc = run_app([*PACKED, "attention=favor", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0
    err = proc.stderr + proc.stdout
    assert "attention 'favor' cannot run packed documents" in err, err[-2000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step
