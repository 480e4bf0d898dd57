"""masked_attention's dispatch: plans and their cache, forced paths, every CPU-runnable path against float64."""
import gc
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import blockzoo
from blockzoo.ops import backend, torch_ref
from blockzoo.ops.attention import analysis, analyze, cost, dispatch, masked_attention, explain
from blockzoo.ops.attention.dispatch import plan_for
from blockzoo.ops.block_mask import block_mask
from blockzoo.ops.sparse import SparseLayout
from helpers import assert_attention_matches, rel_err

OP = "masked_attention"
BIG = 4096


@pytest.fixture(autouse=True)
def _fresh_plans():
    analysis.clear_cache()
    yield
    analysis.clear_cache()


def _cuda_plan(mask, **kw):
    """The plan a CUDA device would get for the TARGETS shape (B=4, H=16, D=64, bf16), computed here."""
    return analyze(mask, batch=4, heads=16, head_dim=64, dtype=torch.bfloat16, device="cuda", **kw)


# ------------------------------------------------------------------------------------ decisions
def test_decision_no_mask_is_flash():
    assert _cuda_plan(None, q_len=BIG, kv_len=BIG).path == "flash"
    q = torch.randn(1, 2, 16, 8)
    masked_attention(q, q, q, causal=True)
    assert blockzoo.ops.last_path(OP) == "flash"


def test_decision_very_sparse_random_is_csr():
    plan = _cuda_plan(torch.rand(BIG, BIG) < 0.005)
    assert plan.path == "csr", plan.explain()
    assert plan.estimates["csr"] < plan.estimates["dense"] < math.inf


def test_decision_sparse_blocks_are_block_sparse():
    layout = torch.rand(BIG // 128, BIG // 128) < 0.05
    mask = layout.repeat_interleave(128, 0).repeat_interleave(128, 1)
    plan = _cuda_plan(mask)
    assert plan.path == "block_sparse", plan.explain()
    visited, full = plan.occupancy[(128, 64)]
    assert visited == full and abs(visited - layout.float().mean().item()) < 1e-6


def test_decision_dense_random_is_never_csr():
    # Dense random masks: every tile is partial. The block-sparse kernel reads 1 bit per element where
    # SDPA reads the bool mask as a bias, and measured 1.09x SDPA-bool at 30% on the H200 (run 10), so
    # the calibrated table may pick it over dense; the per-pair CSR kernel must never be chosen here.
    plan = _cuda_plan(torch.rand(BIG, BIG) < 0.6)
    assert plan.path in ("block_sparse", "dense"), plan.explain()
    assert plan.estimates["csr"] > 5 * min(plan.estimates["block_sparse"], plan.estimates["dense"])


def test_decision_narrow_band_prefers_small_tiles_to_csr():
    i = torch.arange(BIG)
    plan = _cuda_plan((i[:, None] - i[None, :]).abs() <= 20)
    assert plan.path == "block_sparse" and plan.tile is not None


def test_a_path_floor_keeps_short_sequences_dense(monkeypatch):
    mask = torch.rand(2048, 2048) < 0.005

    def plan_with_floors(floor: float):
        table = {**cost.cost_table("cuda")}
        for path in ("block_sparse", "csr"):
            table[path] = {**table[path], "floor_ms": floor}
        monkeypatch.setitem(cost.COSTS, "cuda", table)
        analysis.clear_cache()
        return _cuda_plan(mask)

    assert plan_with_floors(0.0).path != "dense"  # the per-element costs alone favour a sparse path
    plan = plan_with_floors(10 * plan_with_floors(0.0).estimates["dense"])  # a host cost above dense's
    assert plan.path == "dense" and plan.estimates["csr"] >= 10 * plan.estimates["dense"], plan.explain()


def test_sparse_paths_off_for_dropout_head_dim_and_additive_values():
    mask = torch.rand(256, 256) < 0.01
    assert _cuda_plan(mask, dropout_p=0.1).path == "dense"
    assert analyze(mask, head_dim=80, device="cuda").path == "dense"
    additive = torch.randn(256, 256).masked_fill(~mask, float("-inf"))
    plan = _cuda_plan(additive)
    assert plan.path == "dense" and math.isinf(plan.estimates["csr"])
    zero_inf = torch.zeros(256, 256).masked_fill(~mask, float("-inf"))  # 0 / -inf is a keep mask
    plan = _cuda_plan(zero_inf)
    assert not plan.stats.additive and math.isfinite(plan.estimates["csr"]), plan.explain()


def test_decisions_on_the_cpu_are_dense_or_the_sparse_ops():
    one = analyze(torch.rand(BIG, BIG) < 0.01, batch=1, heads=4, head_dim=64, dtype=torch.float32, device="cpu")
    assert one.path == "csr", one.explain()
    assert math.isinf(one.estimates["block_sparse"])
    dense = analyze(torch.rand(1024, 1024) < 0.5, batch=1, heads=4, head_dim=64, dtype=torch.float32,
                       device="cpu")
    assert dense.path == "dense", dense.explain()


@settings(max_examples=25, deadline=None)
@given(L=st.integers(1, 48), S=st.integers(1, 48), density=st.floats(0.0, 1.0), causal=st.booleans(),
       groups=st.sampled_from([(), (2, 1), (1, 2), (2, 2)]), padded=st.booleans(),
       path=st.sampled_from([None, "dense", "csr"]), seed=st.integers(0, 2**16))
def test_any_mask_any_cpu_path_matches_reference(L, S, density, causal, groups, padded, path, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(*groups, L, S, generator=gen) < density
    padding = torch.rand(2, S, generator=gen) < 0.3 if padded else None
    q = torch.randn(2, 2, L, 8, dtype=torch.float64, generator=gen)
    k, v = (torch.randn(2, 1, S, 8, dtype=torch.float64, generator=gen) for _ in range(2))
    out = masked_attention(q, k, v, mask, causal=causal, key_padding_mask=padding, path=path)
    keep = mask if padding is None else mask & ~padding[:, None, None, :]
    assert rel_err(out, torch_ref.attention(q, k, v, keep, causal)) < 1e-10
    plan = plan_for(q, k, v, mask, causal, device="cuda")
    assert plan.estimates[plan.path] <= plan.estimates["dense"]  # never planned slower than dense


# ----------------------------------------------------------------------------------- plan cache
def test_plan_cache_analyzes_each_mask_once():
    q = torch.randn(1, 2, 64, 16)
    mask = torch.rand(64, 64) < 0.3
    for _ in range(3):
        masked_attention(q, q, q, mask)
    info = analysis.cache_info()
    assert info["analyses"] == 1 and info["plans"] == 1 and info["hits"] == 2
    masked_attention(q, q, q, mask, causal=True)  # another causal flag: another analysis
    assert analysis.cache_info()["analyses"] == 2
    mask[0, 0] = ~mask[0, 0]  # in-place change bumps the version
    masked_attention(q, q, q, mask)
    assert analysis.cache_info()["analyses"] == 3
    masked_attention(q, q, q, mask.clone())  # another object
    assert analysis.cache_info()["analyses"] == 4


def test_plan_cache_is_weak():
    mask = torch.rand(32, 32) < 0.5
    analyze(mask, device="cuda")
    assert len(analysis._stats_cache) == 1
    del mask
    gc.collect()
    assert len(analysis._stats_cache) == 0


def test_components_hold_their_plan():
    att = blockzoo.build("attention", "local", num_heads=2, head_dim=16, window_size=8)
    x = torch.randn(2, 2, 40, 16)
    for _ in range(3):
        att(x, x, x, causal=True)
    assert analysis.cache_info()["analyses"] == 1


# ---------------------------------------------------------------------- forcing and validation
def test_forcing_paths(monkeypatch):
    q = torch.randn(1, 2, 32, 16)
    mask = torch.rand(32, 32) < 0.3
    masked_attention(q, q, q, mask, path="dense")
    assert blockzoo.ops.last_path(OP) == "dense"
    monkeypatch.setenv("BLOCKZOO_ATTENTION_PATH", "block_sparse")
    with backend.force("triton"):
        masked_attention(q, q, q, mask)
    assert blockzoo.ops.last_path(OP) == "block_sparse"
    assert "forced" in explain(q, q, q, mask)
    monkeypatch.setenv("BLOCKZOO_ATTENTION_PATH", "sparse")
    with pytest.raises(ValueError, match="BLOCKZOO_ATTENTION_PATH"):
        masked_attention(q, q, q, mask)
    monkeypatch.delenv("BLOCKZOO_ATTENTION_PATH")
    with pytest.raises(ValueError, match="flash"):
        masked_attention(q, q, q, mask, path="flash")
    with pytest.raises(ValueError, match="dropout"):
        masked_attention(q, q, q, mask, path="csr", dropout_p=0.1)


def test_forced_triton_path_off_gpu_falls_back_with_warning():
    q = torch.randn(1, 2, 32, 16)
    mask = torch.rand(32, 32) < 0.3
    with pytest.warns(backend.BlockzooFallbackWarning):
        out = masked_attention(q, q, q, mask, path="block_sparse")
    assert blockzoo.ops.last_path(OP) == "dense"
    assert rel_err(out, torch_ref.attention(q, q, q, mask)) < 1e-5


def test_bad_masks_raise_before_any_kernel():
    q = torch.randn(2, 2, 16, 8)
    with pytest.raises(ValueError, match="broadcast"):
        masked_attention(q, q, q, torch.ones(16, 15, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        masked_attention(q, q, q, torch.ones(16, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="meta"):
        masked_attention(q, q, q, torch.ones(16, 16, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="L=8"):
        masked_attention(q, q, q, block_mask(torch.ones(8, 16, dtype=torch.bool), block_size=(16, 16)))
    with pytest.raises(ValueError, match="causal"):
        masked_attention(q, q, q, block_mask(torch.ones(16, 16, dtype=torch.bool), block_size=(16, 16)),
                         causal=True)
    with pytest.raises(TypeError, match="mask must be"):
        masked_attention(q, q, q, [[True]])


# --------------------------------------------------------------------- every path, fwd and bwd
def _tricky_mask(B: int, L: int, S: int) -> torch.Tensor:
    m = torch.rand(B, 1, L, S) < 0.15
    m[0, :, 1] = False  # empty row
    m[-1, :, 2] = True  # full row
    m[:, :, 3] = False
    m[:, :, 3, S // 2] = True  # one kept element
    return m


PATH_CASES = [
    # (path, force triton, dtype): csr without triton runs the compiled CPU sparse ops
    ("dense", False, torch.float32),
    ("block_sparse", True, torch.float32),
    ("block_sparse", True, torch.float16),
    ("csr", True, torch.float32),
    ("csr", False, torch.float32),
    ("csr", False, torch.float64),
]


@pytest.mark.parametrize("path,triton,dtype", PATH_CASES)
def test_paths_match_reference(path, triton, dtype):
    B, H, HK, L, S, D = 2, 2, 1, 70, 45, 32
    mask = _tricky_mask(B, L, S)
    padding = torch.zeros(B, S, dtype=torch.bool)
    padding[1, -5:] = True
    q = torch.randn(B, H, L, D, dtype=dtype, requires_grad=True)
    k = torch.randn(B, HK, S, D, dtype=dtype, requires_grad=True)
    v = torch.randn(B, HK, S, D, dtype=dtype, requires_grad=True)
    with backend.force("triton" if triton else "auto"):
        out = masked_attention(q, k, v, mask, causal=True, key_padding_mask=padding, path=path)
    assert blockzoo.ops.last_path(OP) == path
    assert_attention_matches(out, q, k, v, mask & ~padding[:, None, None, :], causal=True)
    assert (out[0, :, 1] == 0).all()


@pytest.mark.parametrize("groups", [(), (2,), (1, 2), (2, 2)], ids=["shared", "per-head 3d", "per-head", "per-pair"])
@pytest.mark.parametrize("path,triton", [("csr", False), ("csr", True), ("block_sparse", True)])
def test_mask_groupings_with_key_padding(groups, path, triton):
    B, H, L, S, D = 2, 2, 40, 36, 16
    mask = torch.rand(*groups, L, S) < 0.25
    padding = torch.zeros(B, S, dtype=torch.bool)
    padding[0, 30:] = True
    padding[1, :] = True  # every key padded: zeros
    q, k, v = (torch.randn(B, H, n, D, dtype=torch.float64 if not triton else torch.float32, requires_grad=True)
               for n in (L, S, S))
    with backend.force("triton" if triton else "auto"):
        out = masked_attention(q, k, v, mask, key_padding_mask=padding, path=path)
    assert blockzoo.ops.last_path(OP) == path
    ref = torch_ref.attention(q, k, v, mask & ~padding[:, None, None, :])
    assert rel_err(out.detach(), ref.detach()) < 1e-5
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        assert rel_err(got, want) < 1e-5
    assert (out[1] == 0).all()


def test_key_padding_keeps_the_plan():
    att = blockzoo.build("attention", "local", num_heads=2, head_dim=16, window_size=8)
    x = torch.randn(2, 2, 40, 16)
    for n in (3, 5, 7):
        padding = torch.zeros(2, 40, dtype=torch.bool)
        padding[0, -n:] = True
        att(x, x, x, key_padding_mask=padding)
    assert analysis.cache_info()["analyses"] == 1


def test_block_mask_and_sparse_layout_objects_as_masks():
    L, D = 64, 16
    mask = torch.rand(L, L) < 0.2
    q, k, v = (torch.randn(1, 2, L, D) for _ in range(3))
    ref = torch_ref.attention(q, k, v, mask, causal=True)
    bm = block_mask(mask, causal=True, block_size=(32, 32))
    with backend.force("triton"):
        assert rel_err(masked_attention(q, k, v, bm, path="block_sparse"), ref) < 1e-5
    assert blockzoo.ops.last_path(OP) == "block_sparse"
    assert rel_err(masked_attention(q, k, v, bm), ref) < 1e-5  # on the CPU: dense through to_dense()
    assert blockzoo.ops.last_path(OP) == "dense"
    layout = SparseLayout.from_mask(mask & torch.ones(L, L, dtype=torch.bool).tril())
    with backend.force("triton"):
        assert rel_err(masked_attention(q, k, v, layout, path="csr"), ref) < 1e-5
    assert blockzoo.ops.last_path(OP) == "csr"
    assert rel_err(masked_attention(q, k, v, layout, path="csr"), ref) < 1e-5  # the compiled CPU ops
    assert blockzoo.ops.last_path(OP) == "csr"
    per_head = SparseLayout.from_mask(torch.rand(2, L, L) < 0.3)
    got = masked_attention(q, k, v, per_head, path="csr")
    assert rel_err(got, torch_ref.attention(q, k, v, per_head.to_dense()[None])) < 1e-5


def test_additive_mask_dense_and_fully_masked_rows():
    q = torch.randn(1, 2, 20, 8)
    bias = torch.randn(20, 20)
    bias[4] = float("-inf")
    out = masked_attention(q, q, q, bias)
    assert blockzoo.ops.last_path(OP) == "dense"
    assert rel_err(out, torch_ref.attention(q, q, q, bias)) < 1e-5
    assert (out[:, :, 4] == 0).all()


def test_explain_names_path_and_costs():
    q = torch.randn(1, 2, 64, 16)
    text = explain(q, q, q, torch.rand(64, 64) < 0.1)
    assert "path=" in text and "dense" in text and "estimated" in text
    assert "path=flash" in explain(q, q, q)
    plan = plan_for(q, q, q, torch.rand(64, 64) < 0.1, device="cuda")
    assert plan.device == "cuda" and set(plan.estimates) == set(cost.PATHS)


def test_torch_compile_through_dispatch():
    q = torch.randn(1, 2, 40, 16)
    mask = torch.rand(40, 40) < 0.3

    def f(q, mask):
        return masked_attention(q, q, q, mask, path="csr") * 2

    with backend.force("triton"):
        got = torch.compile(f, backend="aot_eager")(q, mask)  # plan and structures built under compile
        want = f(q, mask)
    assert rel_err(got, want) < 1e-6
    flash = torch.compile(lambda x: masked_attention(x, x, x, causal=True), backend="aot_eager", fullgraph=True)
    assert rel_err(flash(q), torch_ref.attention(q, q, q, causal=True)) < 1e-5


def test_structured_masks_do_not_pin_themselves_in_the_cache():
    q = torch.randn(1, 2, 32, 16)
    bm = block_mask(torch.rand(32, 32) < 0.5, block_size=(16, 16))
    layout = SparseLayout.from_mask(torch.rand(32, 32) < 0.5)
    masked_attention(q, q, q, bm)
    masked_attention(q, q, q, layout)
    assert len(analysis._stats_cache) == 2
    del bm, layout
    gc.collect()
    assert len(analysis._stats_cache) == 0


@pytest.mark.parametrize("additive", [False, True])
def test_dense_empty_row_fix_is_cached_per_causal_and_dtype(additive):
    torch.manual_seed(3)
    keep = torch.rand(40, 40) < 0.3
    keep[[0, 7, 39]] = False  # fully masked rows, also under causal
    mask = torch.zeros(40, 40).masked_fill(~keep, float("-inf")) if additive else keep
    for causal in (False, True, False):  # the second non-causal call reuses its cached fix
        for dtype in (torch.float32, torch.float64):
            q, k, v = (torch.randn(2, 3, 40, 16, dtype=dtype, requires_grad=True) for _ in range(3))
            out = masked_attention(q, k, v, mask, causal=causal, path="dense")
            assert_attention_matches(out, q, k, v, mask, causal)
    stats = plan_for(q, k, v, mask, False, 0.0).stats
    assert {(False, torch.float32), (False, torch.float64)} <= set(stats.dense_fix)


def test_a_tile_backward_factor_steers_the_training_tile(monkeypatch):
    i = torch.arange(BIG)
    band = (i[:, None] - i[None, :]).abs() <= 100
    fwd_tile = _cuda_plan(band).tile
    table = {**cost.cost_table("cuda")}
    tiles = {name: {**costs, "fwd_bwd": 50.0 if name == f"{fwd_tile[0]}x{fwd_tile[1]}" else 3.0}
             for name, costs in table["block_sparse"]["tiles"].items()}
    table["block_sparse"] = {**table["block_sparse"], "tiles": tiles}
    monkeypatch.setitem(cost.COSTS, "cuda", table)
    analysis.clear_cache()
    assert _cuda_plan(band).tile == fwd_tile  # forward: unchanged
    trained = _cuda_plan(band, training=True)
    assert trained.path == "block_sparse" and trained.tile != fwd_tile, trained.explain()


@pytest.mark.parametrize("limit", [None, 0])
def test_dense_keeps_an_sdpa_ready_mask_for_a_static_mask(monkeypatch, limit):
    if limit is not None:  # over the size limit: the bool mask goes to SDPA as it is
        monkeypatch.setattr(dispatch, "DENSE_MASK_CACHE_BYTES", limit)
    torch.manual_seed(4)
    mask = torch.rand(48, 40) < 0.4
    mask[:, 0] = True  # no empty rows
    q = torch.randn(2, 2, 48, 16, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 2, 40, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    for _ in range(2):  # the second call reuses the cached mask
        q.grad = k.grad = v.grad = None
        out = masked_attention(q, k, v, mask, path="dense")
        assert_attention_matches(out, q, k, v, mask, False)
    safe, row_empty = plan_for(q, k, v, mask, False, 0.0).stats.dense_fix[(False, torch.float64)]
    assert row_empty is None
    assert safe.dtype == (torch.bool if limit == 0 else torch.float64)


def test_candidate_tiles_follow_a_replaced_cost_table(monkeypatch):
    assert len(cost.candidate_tiles("cuda")) > 1
    table = {**cost.cost_table("cuda")}
    table["block_sparse"] = {**table["block_sparse"], "tiles": {"32x16": {"full_ns": 1.0, "partial_ns": 1.0}}}
    monkeypatch.setitem(cost.COSTS, "cuda", table)
    assert cost.candidate_tiles("cuda") == ((32, 16),)
    assert cost.candidate_tiles("cuda", interpreting=True) == (cost.INTERPRETER_TILE,)


# ------------------------------------------------------------------------ SDPA's shapes and inputs
@pytest.mark.parametrize("q_shape,kv_shape", [((4, 3, 8), (4, 6, 8)), ((3, 8), (6, 8)), ((4, 3, 8), (4, 4, 6, 8)),
                                              ((2, 3, 2, 3, 8), (2, 1, 2, 6, 8)), ((1, 2, 3, 8), (3, 2, 6, 8))])
def test_sdpa_shapes_with_broadcast_leading_dims(q_shape, kv_shape):
    q = torch.randn(q_shape, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(kv_shape, dtype=torch.float64, requires_grad=True) for _ in range(2))
    for mask in (None, torch.rand(3, 6) < 0.7, torch.randn(*q_shape[:-2], 3, 6, dtype=torch.float64)):
        if mask is not None and mask.dtype == torch.bool:
            mask[:, 0] = True  # no fully masked row: SDPA's NaN there is blockzoo's zeros
        out = masked_attention(q, k, v, mask)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(out, ref)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        for g, r in zip(grads, torch.autograd.grad(ref.sum(), (q, k, v))):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("L,S", [(0, 5), (5, 0), (0, 0)])
@pytest.mark.parametrize("path", [None, "dense", "csr", "block_sparse", "flash"])
def test_empty_lengths_on_every_path_and_in_the_planner(L, S, path):
    q = torch.randn(2, 2, L, 16, requires_grad=True)
    k, v = torch.randn(2, 1, S, 16), torch.randn(2, 1, S, 16)
    mask = torch.rand(L, S) < 0.5
    with blockzoo.ops.force("triton"):
        out = masked_attention(q, k, v, mask if path != "flash" else None, path=path)
    assert out.shape == (2, 2, L, 16) and (out == 0).all()
    out.sum().backward()
    assert "L=" in explain(q, k, v, mask)
    for device in ("cpu", "cuda"):
        assert analyze(mask, batch=2, heads=2, device=device).path in cost.PATHS
        assert analyze(None, q_len=L, kv_len=S, device=device).path in cost.PATHS


def test_bad_inputs_name_the_argument():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(TypeError, match="k must be a torch.Tensor, got list"):
        masked_attention(q, [[1.0]], q)
    with pytest.raises(ValueError, match=r"q must have at least 2 dims, got shape \(\)"):
        masked_attention(torch.tensor(1.0), q, q)
    with pytest.raises(ValueError, match="k must have at least 2 dims"):
        masked_attention(q, torch.tensor(1.0), q)
    with pytest.raises(TypeError, match="key_padding_mask must be a torch.Tensor"):
        masked_attention(q, q, q, key_padding_mask=[[False] * 4])
    with pytest.raises(ValueError, match="key_padding_mask needs 4-D"):
        masked_attention(q[0], q[0], q[0], key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not broadcast"):
        masked_attention(torch.randn(2, 4, 8), torch.randn(3, 4, 8), torch.randn(3, 4, 8))


@pytest.mark.parametrize("path,triton", [("csr", False), ("csr", True), ("block_sparse", True)])
def test_a_finite_additive_mask_is_never_dropped(path, triton):
    """The sparse paths see only which scores are kept: never chosen for finite additive values, forcing raises."""
    q = torch.randn(1, 2, 40, 16)
    bias = torch.randn(40, 40).masked_fill(torch.rand(40, 40) > 0.05, float("-inf"))  # sparse, with finite values
    with blockzoo.ops.force("triton" if triton else "auto"):
        with pytest.raises(ValueError, match="additive"):
            masked_attention(q, q, q, bias, path=path)
        out = masked_attention(q, q, q, bias)
    assert blockzoo.ops.last_path(OP) == "dense"
    assert rel_err(out, torch_ref.attention(q, q, q, bias)) < 1e-5
    for device in ("cpu", "cuda"):
        assert analyze(bias, batch=1, heads=2, head_dim=16, device=device).path == "dense"
