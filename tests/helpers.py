"""Shared test helpers: relative error, per-dtype tolerances, a model's train-and-reload check."""
from pathlib import Path

import torch

import blockzoo


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
