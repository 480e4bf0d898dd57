"""A user's plugin package registers an attention 'gated', selected by +plugins=[...] and by entry point; a broken
plugin warns once and stops nothing else; registering something that is not a component class fails naming the
plugin; the tests see no installed plugin unless they install it (conftest: BLOCKZOO_ENTRY_POINTS)."""
import os
import textwrap
import types
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
import yaml

import blockzoo
from blockzoo import plugins
from blockzoo.registry import REGISTRIES
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


def make_plugin(root: Path, entry_point: bool, package: str = "my_pkg", source: str = GATED,
                name: str = "gated") -> Path:
    """``root/<package>/gated.py``; with ``entry_point``, a dist-info declaring it in group blockzoo.plugins."""
    pkg = root / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "gated.py").write_text(source)
    if entry_point:
        info = root / f"{package}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[blockzoo.plugins]\n{name} = {package}.gated\n")
    return root


def readme_plugin_installed(root: Path) -> Path:
    """The README's example plugin, installed: an entry point registering another class as 'gated'."""
    return make_plugin(root, entry_point=True, package="readme_pkg", source=GATED.replace("per head", "(README)"))


def paths(*roots: Path) -> str:
    return os.pathsep.join(map(str, roots))


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
    """Also with the README's plugin installed: the tests do not see it."""
    out = tmp_path / "run"
    installed = readme_plugin_installed(tmp_path / "site")
    check(run_app(["+plugins=[my_pkg.gated]", "attention=gated", "attention.gate_bias=0.5", *RUN,
                   f"hydra.run.dir={out}"], cwd=tmp_path, pythonpath=paths(plugin_dir, installed)))
    att = trained_attention(out)
    assert att["name"] == "gated" and att["gate_bias"] == 0.5
    assert (out / "checkpoint" / "model.safetensors").is_file()


def test_plugin_selected_by_entry_point_despite_a_broken_one(tmp_path, monkeypatch):
    """An installed plugin that fails to import warns once, naming it and its error; the others still load."""
    root = make_plugin(tmp_path / "installed", entry_point=True)
    make_plugin(root, entry_point=True, package="broken_pkg", source="raise ImportError('needs numpy 3')",
                name="broken")
    monkeypatch.setenv(plugins.SELECT_ENV, "gated,broken")
    out = tmp_path / "run"
    proc = check(run_app(["attention=gated", *RUN, f"hydra.run.dir={out}"], cwd=tmp_path, pythonpath=root))
    assert trained_attention(out)["name"] == "gated"
    assert proc.stderr.count("BlockzooPluginWarning") == 1
    assert "plugin entry point 'broken' (broken_pkg.gated) failed to import" in proc.stderr
    assert "ImportError: needs numpy 3" in proc.stderr


def test_plugin_config_is_validated(plugin_dir, tmp_path):
    proc = run_app(["+plugins=[my_pkg.gated]", "attention=gated", "attention.gate_bias=abc", *RUN,
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, pythonpath=plugin_dir)
    assert proc.returncode != 0
    assert "gate_bias" in proc.stderr and "abc" in proc.stderr
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_missing_plugin_module_is_named(tmp_path):
    proc = run_app(["+plugins=[no_such_pkg.gated]", *RUN, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0 and "no_such_pkg.gated" in proc.stderr


def test_single_plugin_name_without_brackets(plugin_dir, tmp_path):
    out = tmp_path / "run"
    check(run_app(["+plugins=my_pkg.gated", "attention=gated", *RUN, f"hydra.run.dir={out}"], cwd=tmp_path,
                  pythonpath=plugin_dir))
    assert trained_attention(out)["name"] == "gated"


# -- in-process: entry points and registration checks ----------------------------------------------------------
@pytest.fixture
def fresh_plugins(monkeypatch, tmp_path):
    """Entry points not loaded yet, no failures recorded, registries restored afterwards, tmp_path importable."""
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(plugins, "_failures", {})
    for reg in REGISTRIES.values():
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def fake_entry_points(monkeypatch, **modules: str) -> None:
    eps = [EntryPoint(name, value, plugins.ENTRY_POINT_GROUP) for name, value in modules.items()]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps if group == plugins.ENTRY_POINT_GROUP else [])
    monkeypatch.delenv(plugins.SELECT_ENV)


def test_broken_entry_point_warns_once_and_stops_nothing(fresh_plugins, monkeypatch):
    (fresh_plugins / "bz_broken_ep.py").write_text("raise RuntimeError('boom')")
    (fresh_plugins / "bz_good_ep.py").write_text(GATED.replace('"gated"', '"bz_good_ep"'))
    fake_entry_points(monkeypatch, broken="bz_broken_ep", good="bz_good_ep")
    with pytest.warns(blockzoo.BlockzooPluginWarning, match=r"entry point 'broken' \(bz_broken_ep\) failed to "
                                                            r"import and is skipped: RuntimeError: boom") as seen:
        assert "bz_good_ep" in blockzoo.list_components("attention")
        blockzoo.list_components("attention")
    assert len([w for w in seen if issubclass(w.category, blockzoo.BlockzooPluginWarning)]) == 1
    blockzoo.build("attention", "scaled_dot_product", num_heads=2, head_dim=4)  # a run that does not use it
    with pytest.raises(ValueError, match=r"unknown attention 'brokn'.*failed to import: entry point 'broken'"):
        blockzoo.build("attention", "brokn")


def test_tests_do_not_see_installed_plugins(fresh_plugins, monkeypatch):
    (fresh_plugins / "bz_installed_ep.py").write_text("raise AssertionError('an installed plugin was imported')")
    eps = [EntryPoint("installed", "bz_installed_ep", plugins.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(plugins, "entry_points", lambda group: eps)
    assert os.environ[plugins.SELECT_ENV] == "" and plugins.selected_entry_points() == []
    plugins.load_plugins()


@dataclass
class Config(blockzoo.AttentionConfig):
    pass


def plain_function(q, k, v, mask=None):
    return q


class WrongForward(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()

    def forward(self, x):
        return x


class NoConfig(torch.nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, q, k, v, mask=None):
        return q


@pytest.mark.parametrize("obj, problem", [
    (plain_function, "got the function plain_function"),
    (42, "got int 42"),
    (types.ModuleType("some_module"), "got the module some_module"),
    (WrongForward, r"WrongForward\.forward\(self, x\) cannot be called as forward\(q, k, v, mask=\.\.\.\)"),
    (NoConfig, r"NoConfig\(config\) cannot be called with its config"),
    (dict, "dict does not subclass torch.nn.modules.module.Module"),
])
def test_registering_what_is_not_a_component_class_fails(fresh_plugins, obj, problem):
    with pytest.raises(TypeError, match=r"attention 'bad' \(in module .*\): expected an attention class: a "
                                        r"subclass of blockzoo\.Attention .*; " + problem):
        blockzoo.register_attention("bad", Config)(obj)


def test_registration_error_names_the_plugin(fresh_plugins):
    (fresh_plugins / "bz_bad_plugin.py").write_text(textwrap.dedent("""\
        import blockzoo

        @blockzoo.register_feedforward("bz_bad", blockzoo.FeedforwardConfig)
        def feedforward(x):
            return x
    """))
    with pytest.raises(TypeError, match=r"feedforward 'bz_bad' \(plugin module 'bz_bad_plugin'\): expected a "
                                        r"feedforward class: an nn\.Module subclass built as cls\(config\) with "
                                        r"forward\(x\); got the function feedforward"):
        blockzoo.compose(["plugins=bz_bad_plugin"])
