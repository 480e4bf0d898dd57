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


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (NaN anywhere gives inf)."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all() and not torch.equal(torch.isinf(out), torch.isinf(ref)):
        return float("inf")
    finite = torch.isfinite(ref)
    num = (out[finite] - ref[finite]).norm()
    den = ref[finite].norm().clamp_min(1e-30)
    return float(num / den)


TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
