"""Mechanisms that compute in float32 on purpose keep doing so under autocast: favor's causal prefix sums, nystrom's
pseudo-inverse, orthoformer's landmark choice; with the other low-rank mechanisms their outputs under CPU autocast
(and CUDA autocast, ``-m gpu``) stay within the dtype's tolerance of float32 on the CPU.

The causal probe: queries upper-triangular, keys lower-triangular (q_i · k_j = 1 for j = i, 0 for j < i) and
values equal to the position, so each causal row averages the positions up to its own with its own weighted
most: the row sums of the output increase with the row, on the CPU in float32 and wherever the prefix sums
are precise enough."""
import contextlib

import pytest
import torch
from helpers import TOL, rel_err

import blockzoo

pytestmark = pytest.mark.filterwarnings("ignore::blockzoo.BlockzooFallbackWarning")
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
L = 128  # sequence length = head dim; FAVOR's estimate stays ordered in float32 at this scale (0.25)


def favor(device: str = "cpu", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return blockzoo.build("attention", "favor", num_heads=1, head_dim=L, num_features=256).to(device)


def probe(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ones = torch.full((L, L), 0.25, device=device)
    positions = torch.arange(L, dtype=torch.float32, device=device)[:, None].expand(L, L)
    return ones.triu()[None, None], ones.tril()[None, None], positions[None, None].contiguous()


def row_sums(att: torch.nn.Module, device: str, dtype: torch.dtype | None) -> torch.Tensor:
    q, k, v = probe(device)
    with torch.autocast(device, dtype=dtype) if dtype else contextlib.nullcontext():
        out = att(q, k, v, causal=True)
    return out.float().sum(-1)[0, 0]


def assert_ordered(sums: torch.Tensor) -> None:
    steps = sums.diff()
    assert (steps > 0).all(), f"{int((steps <= 0).sum())} of {steps.numel()} rows not above the previous one"


@pytest.mark.parametrize("seed", range(3))
def test_favor_causal_probe_is_ordered_on_the_cpu_in_float32(seed):
    assert_ordered(row_sums(favor(seed=seed), "cpu", None))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_favor_causal_probe_under_cpu_autocast_equals_float32(dtype):
    """Autocast no longer lowers the feature map and the prefix sums (in bf16 they lost the order)."""
    att = favor()
    sums = row_sums(att, "cpu", dtype)
    assert_ordered(sums)
    assert rel_err(sums, row_sums(att, "cpu", None)) <= 1e-6


@pytest.mark.parametrize("tf32", [False, True], ids=["ieee", "tf32"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_favor_causal_probe_on_cuda_under_autocast(dtype, tf32, monkeypatch):
    """Ordered on CUDA under autocast, also with TF32 matmuls (the trainer sets them), and equal to the CPU's
    float32 output within the dtype's tolerance."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    att = favor()
    want = row_sums(att, "cpu", None)
    got = row_sums(att.to("cuda"), "cuda", dtype).cpu()
    assert_ordered(got)
    assert rel_err(got, want) <= TOL[dtype]


MECHANISMS = {"favor": {"num_features": 128}, "nystrom": {"num_landmarks": 16}, "linformer": {"k": 16},
              "lambda": {}, "orthoformer": {"num_landmarks": 8}}


@torch.no_grad()
def outputs_under_autocast(name: str, device: str, dtype: torch.dtype, causal: bool) -> tuple:
    torch.manual_seed(0)
    att = blockzoo.build("attention", name, num_heads=2, head_dim=32, max_seq_len=128, **MECHANISMS[name])
    q, k, v = (torch.randn(2, 2, 128, 32) for _ in range(3))
    want = att(q, k, v, causal=causal)
    att, q, k, v = att.to(device), q.to(device), k.to(device), v.to(device)
    with torch.autocast(device, dtype=dtype):
        got = att(q, k, v, causal=causal)
    return got.float().cpu(), want


CAUSAL = [("favor", True)] + [(name, False) for name in MECHANISMS]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,causal", CAUSAL)
def test_low_rank_mechanisms_under_cpu_autocast_stay_near_float32(name, causal, dtype):
    got, want = outputs_under_autocast(name, "cpu", dtype, causal)
    assert rel_err(got, want) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, marks=GPU), pytest.param(torch.bfloat16, marks=GPU)])
@pytest.mark.parametrize("name,causal", CAUSAL)
def test_low_rank_mechanisms_on_cuda_under_autocast_match_the_cpu(name, causal, dtype):
    got, want = outputs_under_autocast(name, "cuda", dtype, causal)
    assert rel_err(got, want) <= TOL[dtype]
