"""Inside a torch.compile graph, ops follow the measured compiled-path table (no fallback warning)."""
import warnings

import pytest
import torch

import blockzoo
from blockzoo.ops import backend


@pytest.fixture
def compiling(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)


def test_table_rules_apply_in_order(monkeypatch):
    monkeypatch.setitem(backend.COMPILED_PATHS, "softmax", [(1024, "torch"), (8192, "triton"), (None, "torch")])
    assert [backend.compiled_path("softmax", n) for n in (64, 1024, 1025, 8192, 65536)] == \
        ["torch", "torch", "triton", "triton", "torch"]
    assert backend.compiled_path("an_op_not_in_the_table", 10) == "triton"


def test_shipped_table_names_only_real_ops():
    assert set(backend.COMPILED_PATHS) <= set(blockzoo.ops.__all__)
    assert all(path in ("torch", "triton") for rules in backend.COMPILED_PATHS.values() for _, path in rules)


def test_a_torch_entry_traces_the_torch_path_without_warning(compiling, monkeypatch):
    monkeypatch.setitem(backend.COMPILED_PATHS, "layer_norm", [(None, "torch")])
    x = torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.choose("layer_norm", x) == "torch"


def test_the_table_decides_where_the_fast_path_could_run(compiling, monkeypatch):
    monkeypatch.setattr(backend, "_fast_reason", lambda *args: None)  # as on a GPU
    x = torch.randn(4, 8)
    monkeypatch.setitem(backend.COMPILED_PATHS, "layer_norm", [(None, "triton")])
    assert backend.choose("layer_norm", x) == "triton"
    monkeypatch.setitem(backend.COMPILED_PATHS, "layer_norm", [(4, "triton"), (None, "torch")])
    assert backend.choose("layer_norm", x) == "torch"  # rows of 8 elements: the second rule
    with blockzoo.ops.force("triton"):
        assert backend.choose("layer_norm", x) == "triton"  # forcing overrides the table


def test_the_table_can_be_replaced_by_a_file(tmp_path, monkeypatch):
    path = tmp_path / "paths.json"
    path.write_text('{"ops": {"rms_norm": [[null, "triton"]]}}')
    monkeypatch.setenv(backend.COMPILED_PATHS_ENV, str(path))
    assert backend._load_compiled_paths() == {"rms_norm": [(None, "triton")]}
