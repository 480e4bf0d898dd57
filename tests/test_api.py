"""The library's namespace of names (presets and registered components) and save / load like from_pretrained."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import blockzoo
from blockzoo import presets
from blockzoo.api import model_config
from blockzoo.provenance import PLUGINS_FILE

SMALL = dict(dim_model=32, num_layers=1, num_heads=2)
KINDS = ("attention", "feedforward", "norm", "embedding", "model", "task")
CONFIGS = Path(blockzoo.__file__).parent / "configs"


@pytest.mark.parametrize("kind", KINDS)
def test_every_preset_is_listed_and_valid_by_name(kind):
    shipped = sorted(p.stem for p in (CONFIGS / kind).glob("*.yaml"))
    assert set(shipped) <= set(blockzoo.list_components(kind))
    assert set(blockzoo.registry(kind).names()) <= set(blockzoo.list_components(kind))
    for name in shipped:
        values = presets.app_with(kind, name)[kind]
        blockzoo.registry(kind).config(values, path=kind)  # validates against the component's dataclass


def test_models_build_by_name_as_the_command_line_would():
    model = blockzoo.build_model("tiny_lm", **SMALL)
    assert model.cfg.vocab_size == 256 and model.cfg.attention["name"] == "scaled_dot_product"  # the CLI's defaults
    assert blockzoo.build("model", "tiny_lm", **SMALL).cfg == model.cfg
    assert model_config("gpt_small").num_layers == 12
    local = blockzoo.build_model("tiny_lm", attention="local", **SMALL)
    assert local.cfg.attention["window_size"] == 32  # the preset's value
    classifier = blockzoo.build_model("encoder_classifier", num_classes=5, **SMALL)
    assert classifier.cfg.num_classes == 5
    with pytest.raises(ValueError, match=r"unknown model 'tiny_lmm'; did you mean 'tiny_lm'"):
        blockzoo.build_model("tiny_lmm")
    assert blockzoo.list_models("*lm*") == ["decoder_lm", "reversible_lm", "tiny_lm"]


def test_components_build_by_preset_name_and_file():
    ff = blockzoo.build("feedforward", "swiglu", dim_model=16)
    assert ff.cfg.name == "glu" and ff.cfg.activation == "silu"
    att = blockzoo.build("attention", CONFIGS / "attention" / "local.yaml", num_heads=2, head_dim=8)
    assert att.cfg.window_size == 32
    model = blockzoo.build_model(str(CONFIGS / "model" / "tiny_lm.yaml"), **SMALL)
    assert model.cfg == blockzoo.build_model("tiny_lm", **SMALL).cfg
    with pytest.raises(ValueError, match="is a model preset, not a attention"):
        blockzoo.build("attention", CONFIGS / "model" / "tiny_lm.yaml")


def test_describe_shows_the_presets_values_and_required_fields():
    text = blockzoo.describe("feedforward", "swiglu")
    assert "preset 'swiglu'" in text and "feedforward 'glu'" in text and "activation: str = 'silu'" in text
    assert "window_size: int = 32" in blockzoo.describe("attention", "local")
    assert "name: str (required)" in blockzoo.describe("block", "encoder")
    assert "???" not in blockzoo.describe("block", "encoder")


def test_load_gives_an_eval_model_in_the_asked_dtype(tmp_path):
    model = blockzoo.build_model("tiny_lm", **SMALL)
    blockzoo.save(model, tmp_path / "m")
    again = blockzoo.load(tmp_path / "m", dtype=torch.float64)
    assert not again.training and {p.dtype for p in again.parameters()} == {torch.float64}
    tokens = torch.randint(0, 256, (2, 8))
    assert torch.equal(model.eval()(tokens), blockzoo.load(tmp_path / "m", device="cpu")(tokens))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_get_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        folder = blockzoo.save(blockzoo.build_model("tiny_lm", **SMALL), tmp_path / "m")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    assert {f.stat().st_mode & 0o777 for f in folder.iterdir()} == {0o666 & ~umask}


PLUGIN = '''
from dataclasses import dataclass
import blockzoo

@dataclass
class TwiceConfig(blockzoo.FeedforwardConfig):
    pass

@blockzoo.register_feedforward("twice_test", TwiceConfig)
class Twice(blockzoo.registry("feedforward").get("mlp").cls):
    """The MLP, doubled."""
    def forward(self, x):
        return 2 * super().forward(x)
'''


def make_plugin(root: Path, entry_point: bool) -> Path:
    (root / "twice_pkg").mkdir(parents=True)
    (root / "twice_pkg" / "__init__.py").write_text("")
    (root / "twice_pkg" / "twice.py").write_text(PLUGIN)
    if entry_point:
        info = root / "twice_pkg-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: twice-pkg\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[blockzoo.plugins]\ntwice = twice_pkg.twice\n")
    return root


def load_elsewhere(folder: Path, plugin_root: Path | None) -> subprocess.CompletedProcess:
    """``blockzoo.load(folder)`` in a fresh process, with ``plugin_root`` on its path or not."""
    repo = str(Path(blockzoo.__file__).parent.parent)
    path = [repo, *([str(plugin_root)] if plugin_root else []), os.environ.get("PYTHONPATH", "")]
    code = f"import blockzoo; m = blockzoo.load({str(folder)!r}); print(type(m.blocks[0].feedforward).__name__)"
    return subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}, cwd=folder.parent)


@pytest.fixture
def isolated_feedforwards(monkeypatch):
    """Registrations and imports made by the test are undone after it."""
    reg = blockzoo.registry("feedforward")
    monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] == "twice_pkg"]:
        del sys.modules[name]


@pytest.mark.parametrize("entry_point", [False, True])
def test_a_saved_folder_records_its_plugins_and_load_imports_or_names_them(tmp_path, monkeypatch, entry_point,
                                                                           isolated_feedforwards):
    root = make_plugin(tmp_path / "plugin", entry_point)
    monkeypatch.syspath_prepend(str(root))
    import twice_pkg.twice  # noqa: F401  (registers twice_test)

    model = blockzoo.build_model("tiny_lm", feedforward={"name": "twice_test"}, **SMALL)
    folder = blockzoo.save(model, tmp_path / "saved")
    record = (folder / PLUGINS_FILE).read_text()
    assert "module: twice_pkg.twice" in record and "feedforward twice_test" in record
    assert ("distribution: twice-pkg" in record) == entry_point
    assert load_elsewhere(folder, root).stdout.strip() == "Twice"
    missing = load_elsewhere(folder, None)
    assert missing.returncode != 0
    expected = textwrap.dedent(f"""\
        ImportError: {folder} needs plugin components that are not installed:
          feedforward twice_test: from module twice_pkg.twice""")
    assert expected in missing.stderr
    assert ("pip package 'twice-pkg'" in missing.stderr) == entry_point


def test_a_model_of_builtin_parts_records_no_plugins(tmp_path):
    folder = blockzoo.save(blockzoo.build_model("tiny_lm", **SMALL), tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "model.safetensors"]
