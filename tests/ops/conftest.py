"""Fixtures shared by the Triton kernel tests."""
import pytest
import torch

from blockzoo.ops.triton import rowwise


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Every float buffer the kernels' wrappers allocate starts as NaN: an element left unwritten shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*args, **kwargs):
        t = empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def nan_empty_like(*args, **kwargs):
        t = empty_like(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


@pytest.fixture
def split_rows(monkeypatch):
    """Send rows longer than 256 elements down the split-row path, in chunks of 128."""
    monkeypatch.setattr(rowwise, "MAX_FUSED_N", 256)
    monkeypatch.setattr(rowwise, "SPLIT_CHUNK", 128)
