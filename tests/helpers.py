"""Shared test helpers: relative error, per-dtype tolerances, an attention output against the float64
reference, a model's train-and-reload check."""
from pathlib import Path

import pytest
import torch

import blockzoo
from blockzoo.ops import torch_ref


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (NaN anywhere gives inf)."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all() and not torch.equal(torch.isinf(out), torch.isinf(ref)):
        return float("inf")
    finite = torch.isfinite(ref)
    num = (out[finite] - ref[finite]).norm()
    den = ref[finite].norm().clamp_min(1e-30)
    return float(num / den)


# parametrize a test over devices: the CPU always, CUDA under ``pytest -m gpu`` on a GPU machine
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="pytest -m gpu selected a CUDA test on a machine without a CUDA GPU")])]

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def assert_attention_matches(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             mask: torch.Tensor | None, causal: bool = False) -> None:
    """``out`` (computed from q, k, v) against ``torch_ref.attention`` in float64, and after one
    backward with a random gradient q/k/v's gradients too: within 2x (output) and 4x (gradients)
    the tolerance of q's dtype."""
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = torch_ref.attention(qd, kd, vd, mask, causal)
    grad = torch.randn(ref.shape, dtype=torch.float64)
    ref.backward(grad)
    out.backward(grad.to(q.dtype))
    tol = 2 * TOL[q.dtype]
    assert rel_err(out.detach(), ref.detach()) < tol
    for got, want in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert rel_err(got, want) < 2 * tol


def assert_trains_and_reloads(model: torch.nn.Module, batch: dict, args: tuple, folder: Path) -> None:
    """One backward of ``model.loss(batch)`` gives a finite loss and finite gradients, and the model
    saved to ``folder`` reloads to identical eval-mode outputs on ``model(*args)``."""
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    blockzoo.save(model, folder)
    again = blockzoo.load(folder).eval()
    assert torch.equal(model(*args), again(*args))
