"""Test setup: Triton kernels run on the CPU through the interpreter (set before blockzoo imports)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from blockzoo.ops import backend  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_backend_state():
    """Each test starts with no remembered warnings, failures or recorded paths, and a fixed seed."""
    backend.reset()
    torch.manual_seed(0)
    yield
    backend.reset()
