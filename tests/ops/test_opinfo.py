"""PyTorch's own OpInfo sample inputs (``op_db``) through ``blockzoo.ops``, against PyTorch in float64, forward and
backward: softmax, log_softmax, masked.softmax, layer_norm, rms_norm and scaled_dot_product_attention.

Each sample runs on the default path and on every forced path that claims it: the Triton kernels (under the
interpreter on the CPU) and, for attention, the dense and CSR paths. Samples or paths a feature of which we do not
claim are filtered in ``_unclaimed`` with the reason; every other sample must match.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any

import pytest
import torch
from helpers import DEVICES
from torch.testing._internal.common_methods_invocations import op_db

import blockzoo

pytestmark = pytest.mark.filterwarnings("ignore::blockzoo.ops.BlockzooFallbackWarning")

OPS = ("softmax", "log_softmax", "masked.softmax", "nn.functional.layer_norm", "nn.functional.rms_norm",
       "nn.functional.scaled_dot_product_attention")
SDPA = "nn.functional.scaled_dot_product_attention"
# the paths each op runs its samples on: its default path and each forced path that claims them (masked_attention's
# Triton kernels take head dims 16 to 128, SDPA's samples have 8: test_properties.py runs them)
PATHS = {SDPA: ("default", "dense", "csr")}
OTHER_PATHS = ("default", "triton")
INFOS = {(o.name, o.variant_test_name): o for o in op_db if o.name in OPS}
TOL = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-4, 1e-5)}  # (rtol, atol)


@functools.cache
def _samples(name: str, variant: str, device: str) -> tuple:
    """The op's samples on ``device`` (made once; the tests only read them)."""
    torch.manual_seed(0)  # the samples' random values; their count and shapes do not depend on it
    return tuple(INFOS[(name, variant)].sample_inputs(device, torch.float64, requires_grad=True))


CASES = [(name, variant, i, path) for name, variant in INFOS for i in range(len(_samples(name, variant, "cpu")))
         for path in PATHS.get(name, OTHER_PATHS)]


def _unclaimed(name: str, sample, path: str, device: str) -> str | None:
    """Why this sample is not run on this path (None: it is)."""
    if name != SDPA:
        return None
    if sample.kwargs.get("dropout_p", 0.0) > 0:
        return "dropout_p > 0 draws random numbers: outputs cannot be compared"
    if path == "csr" and device == "cuda":
        return "csr on CUDA is the Triton kernel, whose head dims exclude these samples' 8"
    mask = sample.kwargs.get("attn_mask")
    if path == "csr" and mask is not None and mask.is_floating_point():
        return "csr cannot apply a float mask's finite values: forcing it raises (the test below)"
    return None


def _call(name: str, x: torch.Tensor, args: tuple, kwargs: dict, path: str) -> torch.Tensor:
    """The sample mapped onto blockzoo's signature of the op."""
    if name in ("softmax", "log_softmax"):
        if "dtype" in kwargs:  # torch's dtype= casts the input first
            x = x.to(kwargs["dtype"])
        return blockzoo.ops.softmax(x, args[0], log=name == "log_softmax")
    if name == "masked.softmax":
        return blockzoo.ops.softmax(x, args[0], mask=kwargs.get("mask"))
    if name == "nn.functional.layer_norm":
        return blockzoo.ops.layer_norm(x, *args, **kwargs)
    if name == "nn.functional.rms_norm":  # torch's default eps is its input's machine epsilon (float64 here)
        return blockzoo.ops.rms_norm(x, *args, eps=kwargs.get("eps", torch.finfo(torch.float64).eps))
    assert name == SDPA
    return blockzoo.ops.masked_attention(x, args[0], args[1], mask=kwargs.get("attn_mask"),
                                         causal=kwargs.get("is_causal", False), scale=kwargs.get("scale"),
                                         path=None if path in ("default", "triton") else path)


def _reference(name: str, info, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """PyTorch's result. masked.softmax differs in one documented place: a fully masked row is zeros in
    blockzoo (NaN in torch.masked), so such rows are unmasked for torch and zeroed after it."""
    if name != "masked.softmax" or kwargs.get("mask") is None:
        return info.op(x, *args, **kwargs)
    dim = args[0]
    if x.dim() == 0:
        return info.op(x, *args, **kwargs) if bool(kwargs["mask"]) else x * 0
    mask = kwargs["mask"].expand(x.shape)
    empty = ~mask.any(dim, keepdim=True)
    out = torch.masked.softmax(x, dim, mask=mask | empty)
    return torch.where(empty, torch.zeros_like(out), out)


def _cast(t: Any, dtype: torch.dtype) -> Any:
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t.detach().to(dtype).requires_grad_(t.requires_grad)
    return t


def _leaves(x: torch.Tensor, args: tuple) -> list[torch.Tensor]:
    return [t for t in (x, *args) if isinstance(t, torch.Tensor) and t.requires_grad]


def _assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _forced(path: str) -> contextlib.AbstractContextManager:
    return blockzoo.ops.force("triton") if path == "triton" else contextlib.nullcontext()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,variant,index,path", CASES)
def test_opinfo_sample(name: str, variant: str, index: int, path: str, device: str):
    info = INFOS[(name, variant)]
    sample = _samples(name, variant, device)[index]
    reason = _unclaimed(name, sample, path, device)
    if reason is not None:
        pytest.skip(reason)
    # the Triton kernels compute in float32 (forcing them on float64 raises): their inputs are cast to float32
    dtype = torch.float32 if path == "triton" else torch.float64
    x, args = _cast(sample.input, dtype), tuple(_cast(a, dtype) for a in sample.args)
    kwargs = {k: dtype if isinstance(v, torch.dtype) else _cast(v, dtype) for k, v in sample.kwargs.items()}
    with _forced(path):
        out = _call(name, x, args, kwargs, path)
    if path == "triton":
        assert blockzoo.ops.last_path("softmax" if "softmax" in name else name.split(".")[-1]) == "triton"
    ref = _reference(name, info, sample.input, sample.args, sample.kwargs)
    assert out.shape == ref.shape
    _assert_close(out, ref, dtype, "output")
    if ref.numel() == 0:
        return
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, _leaves(x, args), grad.to(out.dtype))
    want = torch.autograd.grad(ref, _leaves(sample.input, sample.args), grad)
    for i, (g, w) in enumerate(zip(got, want)):
        _assert_close(g, w, dtype, f"gradient of input {i}")


def test_every_op_has_samples():
    """The OpInfo entries exist in this torch (a renamed entry would silently drop its samples)."""
    assert {name for name, _ in INFOS} == set(OPS)
    assert len({case[:3] for case in CASES}) >= 63


def test_forced_sparse_paths_refuse_the_additive_mask_sample():
    """SDPA's float attn_mask sample carries finite values: the sparse paths cannot apply them and raise."""
    sample = next(s for s in _samples(SDPA, "", "cpu") if s.kwargs.get("attn_mask") is not None)
    assert sample.kwargs["attn_mask"].is_floating_point()
    with pytest.raises(ValueError, match="additive"):
        _call(SDPA, sample.input, sample.args, sample.kwargs, "block_sparse")

