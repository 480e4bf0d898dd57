"""Autocast policies (``blockzoo/ops/autocast.py``): under ``torch.autocast`` every op gives the dtype and the
values of the PyTorch op or composition it stands in for, on its torch path and its fast path (Triton under the
interpreter on the CPU), with CPU autocast in fp16 and bf16 here and CUDA autocast under ``pytest -m gpu``.
Mixed-dtype q, k, v reach ``masked_attention`` as they reach SDPA, and the casts trace under torch.compile."""
import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from helpers import DEVICES, TOL, rel_err

import blockzoo
from blockzoo import ops
from blockzoo.ops import autocast, torch_ref

pytestmark = pytest.mark.filterwarnings("ignore::blockzoo.BlockzooFallbackWarning",
                                        "ignore:overflow encountered in exp:RuntimeWarning",
                                        "ignore:Mismatch dtype between input and weight:UserWarning")
HALF = [torch.float16, torch.bfloat16]
D, V = 16, 24


def params(device):
    g = torch.Generator().manual_seed(1)
    w, b, W, Wb = (torch.randn(*s, generator=g).to(device) for s in ((D,), (D,), (V, D), (V,)))
    return {"w": w, "b": b, "W": W / D**0.5, "Wb": Wb, "t": torch.randint(0, V, (6,), generator=g).to(device)}


# name -> (blockzoo call, PyTorch call); both take x (6, D) and the parameters (float32, as a model's are)
CASES = {
    "softmax": (lambda x, p: ops.softmax(x), lambda x, p: F.softmax(x, -1)),
    "log_softmax": (lambda x, p: ops.softmax(x, log=True), lambda x, p: F.log_softmax(x, -1)),
    "layer_norm": (lambda x, p: ops.layer_norm(x, D, p["w"], p["b"]),
                   lambda x, p: F.layer_norm(x, (D,), p["w"], p["b"])),
    "rms_norm": (lambda x, p: ops.rms_norm(x, D, p["w"]), lambda x, p: F.rms_norm(x, (D,), p["w"], 1e-6)),
    "fused_linear_cross_entropy": (lambda x, p: ops.fused_linear_cross_entropy(x, p["W"], p["t"]),
                                   lambda x, p: F.cross_entropy(F.linear(x, p["W"]), p["t"])),
    **{f"linear_act[{a}]": (lambda x, p, a=a: ops.linear_act(x, p["W"], p["Wb"], a),
                            lambda x, p, a=a: torch_ref.activation(F.linear(x, p["W"], p["Wb"]), a))
       for a in torch_ref.ACTIVATIONS},
    **{f"dropout_bias_act[{a}]": (lambda x, p, a=a: ops.dropout_bias_act(x, p["b"], 0.0, a),
                                  lambda x, p, a=a: torch_ref.activation(x + p["b"], a))
       for a in torch_ref.ACTIVATIONS},
}


def slow_on_interpreter(name, dtype, device, path):
    """The interpreter's ``tl.dot`` is wrong in bf16: linear_act's Triton GEMM is checked in fp16 there."""
    return path == "triton" and device == "cpu" and dtype == torch.bfloat16 and name.startswith("linear_act")


@pytest.mark.parametrize("path", ["torch", "triton"])
@pytest.mark.parametrize("x_dtype", ["float32", "autocast"])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CASES))
def test_op_under_autocast_matches_pytorch(name, device, dtype, x_dtype, path):
    """Output dtype equal to PyTorch's under the same autocast, values within the autocast dtype's tolerance,
    for x in float32 (the residual stream) or in the autocast dtype (a linear's output)."""
    if slow_on_interpreter(name, dtype, device, path):
        pytest.skip("interpreter: tl.dot is wrong in bf16")
    ours, theirs = CASES[name]
    p = params(device)
    x = torch.randn(6, D, device=device, dtype=torch.float32 if x_dtype == "float32" else dtype)
    with torch.autocast(device, dtype=dtype):
        want = theirs(x, p)
        with ops.force(path):
            got = ours(x, p)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert rel_err(got.float(), want.float()) <= 2 * TOL[dtype]


def sdpa_inputs(device, dtype):
    """q float32, k in the autocast dtype, v float32: what a component projecting only k in autocast passes."""
    q, k, v = (torch.randn(2, 4, 32, 16, device=device) for _ in range(3))
    return q, k.to(dtype), v


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("device", DEVICES)
def test_masked_attention_takes_mixed_dtypes_as_sdpa_does(device, dtype, mask_kind):
    q, k, v = sdpa_inputs(device, dtype)
    keep = (torch.rand(32, 32, device=device) < 0.3) | torch.eye(32, dtype=torch.bool, device=device)
    mask = {"none": None, "causal": None, "bool": keep,
            "float": torch.zeros(32, 32, device=device).masked_fill(~keep, float("-inf"))}[mask_kind]
    causal = mask_kind == "causal"
    with torch.autocast(device, dtype=dtype):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        got = ops.masked_attention(q, k, v, mask, causal=causal)
        assert ops.explain(q, k, v, mask, causal=causal).startswith("masked_attention")
    assert got.dtype == want.dtype == dtype
    assert rel_err(got.float(), want.float()) <= 2 * TOL[dtype]


def test_float_mask_under_autocast_keeps_its_cached_plan():
    """Masks are not cast at the entry: a static float mask is analyzed once, as off autocast."""
    from blockzoo.ops.attention import analysis

    q, k, v = sdpa_inputs("cpu", torch.bfloat16)
    bias = -torch.rand(32, 32) * 4  # an ALiBi-like float32 bias
    analysis.clear_cache()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            ops.masked_attention(q, k, v, bias)
    assert analysis.cache_info()["analyses"] == 1


@pytest.mark.parametrize("path", ["csr", "block_sparse"])
def test_masked_attention_sparse_paths_under_cpu_autocast(path):
    """The sparse paths (compiled CPU ops; Triton under the interpreter) get the cast inputs too (fp16: the
    interpreter's bf16 is not exact)."""
    q, k, v = sdpa_inputs("cpu", torch.float16)
    keep = (torch.rand(32, 32) < 0.2) | torch.eye(32, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.float16), ops.force("triton" if path == "block_sparse" else "auto"):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        got = ops.masked_attention(q, k, v, keep, path=path)
    assert ops.last_path("masked_attention") == path
    assert got.dtype == torch.float16
    assert rel_err(got.float(), want.float()) <= 2 * TOL[torch.float16]


def test_float64_meta_and_disabled_autocast_are_left_alone():
    x64, x32, meta = torch.randn(3, D, dtype=torch.float64), torch.randn(3, D), torch.randn(3, D, device="meta")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast.cast("softmax", meta, None)[0] is meta  # a device autocast does not know
        assert ops.linear_act(x64, torch.randn(5, D, dtype=torch.float64), None, "relu").dtype == torch.float64
        cast = autocast.cast("linear_act", x32, x64)
        assert cast[0].dtype == torch.bfloat16 and cast[1] is x64
        with torch.autocast("cpu", enabled=False):
            assert autocast.cast("linear_act", x32, x64)[0] is x32
    assert autocast.cast("masked_attention", "not a tensor", x32)[1] is x32  # the op's own check reports it


def test_every_registered_fast_op_has_a_policy():
    from blockzoo.ops.catalog import TRITON_OPS

    assert set(TRITON_OPS) <= set(autocast.POLICIES)
    for op in autocast.POLICIES:
        assert {autocast.policy(op, d) for d in ("cpu", "cuda")} <= {autocast.LOWER, autocast.FP32, autocast.PROMOTE,
                                                                      autocast.KEEP}


def test_cast_is_one_check_off_autocast(monkeypatch):
    """Off autocast the entry costs one torch.is_autocast_enabled call and returns its arguments."""
    calls = []
    real = torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: calls.append(a) or real(*a))
    x = torch.randn(2, D)
    args = (x, None)
    assert autocast.cast("softmax", *args) == args
    assert calls == [("cpu",)]


def test_policies_trace_under_compile():
    """Every op under CPU bf16 autocast in one fullgraph aot_eager graph: same dtypes and values as eager."""
    p = params("cpu")
    q, k, v = sdpa_inputs("cpu", torch.bfloat16)

    def f(x):
        y = ops.layer_norm(x, D, p["w"], p["b"])
        h = ops.linear_act(y, p["W"], p["Wb"], "gelu")
        z = ops.dropout_bias_act(ops.softmax(y) + ops.rms_norm(y, D, p["w"]), p["b"], 0.0, "silu")
        loss = ops.fused_linear_cross_entropy(z, p["W"], p["t"])
        return h, z, loss, ops.masked_attention(q, k, v, causal=True)

    x = torch.randn(6, D)
    torch._dynamo.reset()
    with ops.force("torch"), torch.autocast("cpu", dtype=torch.bfloat16):
        eager = f(x)
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    for e, c in zip(eager, compiled):
        assert e.dtype == c.dtype
        torch.testing.assert_close(c, e)
    assert [t.dtype for t in eager] == [torch.bfloat16, torch.float32, torch.float32, torch.bfloat16]


def test_compositional_attention_runs_under_cpu_autocast():
    """compositional attention called directly projects some of q, k, v inside autocast (the issue's crash)."""
    att = blockzoo.build("attention", "compositional", num_heads=2, head_dim=8)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = att(q, k, v)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
