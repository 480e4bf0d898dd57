"""A user's plugin package registers an attention 'gated', selected by +plugins=[...] and by entry point."""
import textwrap
from pathlib import Path

import pytest
import yaml

from cli_helpers import TINY, check, run_app

GATED = '''
"""A user's attention: softmax attention scaled by a learned per-head sigmoid gate."""
from dataclasses import dataclass

import torch

import blockzoo


@dataclass
class GatedConfig(blockzoo.AttentionConfig):
    gate_bias: float = 0.0


@blockzoo.register_attention("gated", GatedConfig)
class GatedAttention(blockzoo.Attention):
    """Softmax attention times sigmoid(gate + gate_bias) per head."""

    def __init__(self, cfg: GatedConfig):
        super().__init__(cfg)
        self.gate = torch.nn.Parameter(torch.zeros(cfg.num_heads, 1, 1))

    def forward(self, q, k, v, mask=None):
        out = blockzoo.ops.masked_attention(q, k, v, mask=mask)
        return out * torch.sigmoid(self.gate + self.cfg.gate_bias)
'''

RUN = [*TINY, "task=copy", "task.seq_len=16", "trainer.steps=2", "trainer.eval_every=0"]


def make_plugin(root: Path, entry_point: bool) -> Path:
    """``root/my_pkg/gated.py``; with ``entry_point``, a dist-info declaring it in group blockzoo.plugins."""
    pkg = root / "my_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "gated.py").write_text(GATED)
    if entry_point:
        info = root / "my_pkg-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(textwrap.dedent("""\
            [blockzoo.plugins]
            gated = my_pkg.gated
        """))
    return root


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    return make_plugin(tmp_path / "plugin", entry_point=False)


def trained_attention(run_dir: Path) -> dict:
    """The run's attention config, checked to be the one its checkpoint rebuilds."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved = yaml.safe_load((run_dir / "checkpoint" / "config.yaml").read_text())
    assert {k: saved["attention"][k] for k in cfg["attention"]} == cfg["attention"]
    return cfg["attention"]


def test_plugin_selected_by_plugins_override(plugin_dir, tmp_path):
    out = tmp_path / "run"
    check(run_app(["+plugins=[my_pkg.gated]", "attention=gated", "attention.gate_bias=0.5", *RUN,
                   f"hydra.run.dir={out}"], cwd=tmp_path, pythonpath=plugin_dir))
    att = trained_attention(out)
    assert att["name"] == "gated" and att["gate_bias"] == 0.5
    assert (out / "checkpoint" / "model.safetensors").is_file()


def test_plugin_selected_by_entry_point(tmp_path):
    root = make_plugin(tmp_path / "installed", entry_point=True)
    out = tmp_path / "run"
    check(run_app(["attention=gated", *RUN, f"hydra.run.dir={out}"], cwd=tmp_path, pythonpath=root))
    assert trained_attention(out)["name"] == "gated"


def test_plugin_config_is_validated(plugin_dir, tmp_path):
    proc = run_app(["+plugins=[my_pkg.gated]", "attention=gated", "attention.gate_bias=abc", *RUN,
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, pythonpath=plugin_dir)
    assert proc.returncode != 0
    assert "gate_bias" in proc.stderr and "abc" in proc.stderr
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_missing_plugin_module_is_named(tmp_path):
    proc = run_app(["+plugins=[no_such_pkg.gated]", *RUN, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0 and "no_such_pkg.gated" in proc.stderr
