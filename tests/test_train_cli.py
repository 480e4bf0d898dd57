"""The training app as users run it: overrides, output files, kill + resume, sweeps, config errors; info and compare."""
import importlib.util
import json
from pathlib import Path

import yaml

import blockzoo
from blockzoo import compare, info
from blockzoo.ops.catalog import FAST_OPS
from cli_helpers import TINY, check, run_app

COPY = [*TINY, "attention=local", "attention.window_size=8", "task=copy", "task.seq_len=16"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cli_trains_writes_its_files_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = [*COPY, "trainer.steps=4", "trainer.log_every=1", "trainer.eval_every=2", "trainer.checkpoint_every=2",
            f"hydra.run.dir={out}"]
    check(run_app([*args, "trainer.stop_after=3"], cwd=tmp_path))
    assert [r["step"] for r in records(out)] == [0, 1, 2, 3]
    proc = check(run_app([*args, "trainer.resume=true"], cwd=tmp_path))
    rows = records(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 4] and rows[-1]["final"]
    for r in rows[1:-1]:
        assert {"step", "loss", "lr", "tokens_per_s"} <= r.keys()
    assert {"val_loss", "val_accuracy"} <= rows[2].keys() and {"val_loss", "val_accuracy"} <= rows[4].keys()
    assert {"val_loss", "val_accuracy", "tokens_per_s", "peak_memory_mb"} <= rows[-1].keys()
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["attention"] == {**cfg["attention"], "name": "local", "window_size": 8}
    assert cfg["model"]["vocab_size"] == 18 and cfg["task"]["name"] == "copy"
    assert {p.name for p in (out / "checkpoint").iterdir()} == {"model.safetensors", "config.yaml",
                                                                 "training_state.pt", "manifest.json"}
    model = blockzoo.load(out / "checkpoint")
    assert model.blocks[0].self_attn.attention.cfg.window_size == 8
    assert "resumed from" in proc.stdout


def test_default_task_prints_a_sample(tmp_path):
    out = tmp_path / "run"
    proc = check(run_app([*TINY, "task.seq_len=32", "task.max_bytes=200000",
                          "trainer.steps=2", "trainer.eval_every=0", f"hydra.run.dir={out}"], cwd=tmp_path))
    assert "sample:" in proc.stdout
    assert records(out)[-1]["final"]


def test_sweep_runs_each_job_and_compare_tabulates(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    check(run_app(["-m", "attention=scaled_dot_product,local", *TINY, "task=copy", "task.seq_len=16",
                   "trainer.steps=2", "trainer.eval_every=0", f"hydra.sweep.dir={sweep}"], cwd=tmp_path))
    runs = sorted(p.parent for p in sweep.rglob("metrics.jsonl"))
    assert len(runs) == 2 and all(records(r)[-1]["final"] for r in runs)
    assert compare.main([str(sweep)]) == 0
    table = capsys.readouterr().out
    assert "attention=scaled_dot_product" in table and "attention=local" in table
    assert (sweep / "comparison.md").read_text() == table
    csv_lines = (sweep / "comparison.csv").read_text().splitlines()
    assert csv_lines[0].startswith("run,overrides,step,val_loss") and len(csv_lines) == 3
    if importlib.util.find_spec("matplotlib") is not None:
        assert (sweep / "comparison.png").stat().st_size > 0
    assert compare.varying_overrides(compare.collect(sweep)) == ["attention=scaled_dot_product", "attention=local"]


def test_misspelt_key_is_named(tmp_path):
    proc = run_app([*COPY, "attention.window_sizee=3", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0 and "window_sizee" in proc.stderr
    assert "did you mean 'window_size'" in proc.stderr


def test_unknown_attention_lists_the_close_match(tmp_path):
    proc = run_app([*TINY, "attention=locl", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0 and "attention=locl: no such option; did you mean 'local'" in proc.stderr


def test_compare_skips_plot_without_matplotlib_or_writes_it(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "sweep" / "0_a"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- attention=local\n")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "val_loss": 2.0}) + "\n")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import fails
    assert compare.main([str(tmp_path / "sweep")]) == 0
    captured = capsys.readouterr()
    assert "| 0_a | attention=local | 1 | 2 |" in captured.out and "incomplete" in captured.out
    assert "matplotlib is not installed" in captured.err and not (tmp_path / "sweep" / "comparison.png").exists()


def test_info_reports_versions_device_and_op_paths():
    text = info.report()
    for word in ("python", "torch", "triton", "hydra-core", "omegaconf", "blockzoo", "device:", "blockzoo._C"):
        assert word in text
    for op in ("softmax", "layer_norm", "rms_norm", "linear_act", "fused_linear_cross_entropy", "masked_attention"):
        assert f"  {op} " in text
    if not __import__("torch").cuda.is_available():
        assert "torch (tensor on cpu" in text


def test_info_reports_every_fast_op_blockzoo_ops_exports():
    assert set(info.op_paths(info.default_device())) == set(FAST_OPS)
    assert set(FAST_OPS) <= set(blockzoo.ops.__all__)
