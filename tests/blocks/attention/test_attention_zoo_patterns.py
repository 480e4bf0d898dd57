"""random, global, blocksparse and alibi attention and the block layout helpers: float64 equality with
masked dense attention under the mechanism's own pattern, declared capabilities, grouped-query inputs,
and models built from compose()."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_trains_and_reloads

import blockzoo
from blockzoo.blocks.attention import layouts
from blockzoo.blocks.attention.alibi import alibi_slopes
from blockzoo.blocks.attention.blocksparse import BlockSparseAttention, BlockSparseConfig
from blockzoo.blocks.attention.random_pattern import random_pattern
from blockzoo.ops import torch_ref

NAMES = ["random", "global", "blocksparse", "alibi"]
B, H, D = 2, 4, 8
MAX_LEN = 32
F64 = torch.float64
FIELDS = {
    "random": dict(density=0.3, seed=1),
    "global": dict(num_global=2, window_size=4),
    "blocksparse": dict(block_size=4, layout="bigbird", num_random_blocks=1),
    "alibi": dict(),
}
TASK = "task=copy" if "copy" in blockzoo.list_components("task") else "~task"


def build(name, **fields):
    cfg = {**FIELDS[name], **fields}
    return blockzoo.build("attention", name, num_heads=H, head_dim=D, max_seq_len=MAX_LEN, **cfg).to(F64)


def qkv(length, s=None, kv_heads=H, grad=False):
    s = length if s is None else s
    shapes = [(B, H, length, D), (B, kv_heads, s, D), (B, kv_heads, s, D)]
    return tuple(torch.randn(*shape, dtype=F64, requires_grad=grad) for shape in shapes)


def additive(keep_or_bias):
    """A bool keep mask or a float bias as a float64 additive mask (dropped entries at -inf)."""
    if keep_or_bias.dtype == torch.bool:
        return torch.zeros(keep_or_bias.shape, dtype=F64).masked_fill(~keep_or_bias, float("-inf"))
    return keep_or_bias.to(F64)


def reference(att, q, k, v, mask=None, causal=False, key_padding_mask=None):
    """torch_ref.attention with the mechanism's own pattern, the user mask and key padding summed
    as additive masks (built here, independently of the mechanism's combination code)."""
    total = additive(att.pattern(q.shape[-2], k.shape[-2], q.device))
    if mask is not None:
        total = total + additive(mask)
    if key_padding_mask is not None:
        total = total + additive(~key_padding_mask[:, None, None, :])
    return torch_ref.attention(q, k, v, mask=total, causal=causal)


def user_mask(kind, length, s):
    if kind == "none":
        return None
    if kind == "bool":
        keep = torch.rand(B, 1, length, s) > 0.3
        keep[:, :, :, 0] = True
        return keep
    return torch.randn(1, H, length, s, dtype=F64)


# --------------------------------------------------------------------------------------------
# Exact references
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_equals_masked_dense_attention(name, causal, mask_kind):
    L = 13  # not a multiple of the block size
    att = build(name)
    q, k, v = qkv(L)
    mask = user_mask(mask_kind, L, L)
    padding = torch.zeros(B, L, dtype=torch.bool)
    padding[1, 9:] = True
    out = att(q, k, v, mask=mask, causal=causal, key_padding_mask=padding)
    ref = reference(att, q, k, v, mask, causal, padding)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_cross_attention_and_full_length(name):
    att = build(name)
    for L, S in [(7, 19), (MAX_LEN, MAX_LEN), (20, 5)]:
        q, k, v = qkv(L, S)
        torch.testing.assert_close(att(q, k, v), reference(att, q, k, v), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("name", NAMES)
def test_grouped_query_matches_repeated_heads(name, kv_heads):
    att = build(name)
    q, k, v = qkv(11, kv_heads=kv_heads)
    expected = att(q, torch_ref.repeat_kv(k, H), torch_ref.repeat_kv(v, H), causal=True)
    torch.testing.assert_close(att(q, k, v, causal=True), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_finite(name):
    att = build(name, dropout=0.1).train()
    q, k, v = qkv(16, kv_heads=2, grad=True)
    out = att(q, k, v, causal=True)
    out.backward(torch.randn_like(out))
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_pattern_cached_per_length_and_device(name):
    att = build(name)
    first = att.pattern(12, 12, torch.device("cpu"))
    assert att.pattern(12, 12, torch.device("cpu")) is first
    assert att.pattern(12, 10, torch.device("cpu")) is not first


@pytest.mark.parametrize("name", NAMES)
def test_declares_everything_and_refuses_bad_inputs(name):
    caps = blockzoo.registry("attention").get(name).cls.capabilities()
    assert caps == {"causal": True, "mask": True, "key_padding": True, "cross": True, "grid": False,
                    "fixed_length": False, "softcap": True, "sinks": True,
                    "documents": name == "alibi",  # the others' patterns are tied to absolute positions
                    "decoding": name == "alibi"}  # alibi's bias is a function of the two positions alone
    assert "(no docstring)" not in blockzoo.describe("attention", name)
    att = build(name)
    q, k, v = qkv(8)
    if att.pattern(8, 8, q.device).shape[0] == H:  # a per-head pattern needs exactly H heads
        with pytest.raises(ValueError):
            att(q[:, :3], k[:, :3], v[:, :3])
    with pytest.raises(ValueError):
        att(q, k, v, mask=torch.ones(3, 8, 8, dtype=torch.bool))  # does not broadcast to (B, H, L, S)


# --------------------------------------------------------------------------------------------
# Mechanism-specific patterns
# --------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2**20))
def test_random_pattern_properties(heads, length, density, seed):
    p = random_pattern(heads, length, length, density, seed)
    assert p.shape == (heads, length, length) and p.dtype == torch.bool
    assert p.diagonal(dim1=-2, dim2=-1).all()  # every query keeps its own key
    assert torch.equal(p, random_pattern(heads, length, length, density, seed))
    longer = random_pattern(heads, length + 7, length + 7, density, seed)
    assert torch.equal(longer[:, :length, :length], p)  # shorter sequences see a crop
    if density in (0.0, 1.0):
        assert p.all() if density == 1.0 else p.sum() == heads * length


def test_random_density_heads_and_seed():
    p = random_pattern(4, 256, 256, 0.2, seed=3)
    off = p & ~torch.eye(256, dtype=torch.bool)
    assert abs(off.float().sum() / (4 * 256 * 255) - 0.2) < 0.01
    assert not torch.equal(p[0], p[1])
    assert not torch.equal(p, random_pattern(4, 256, 256, 0.2, seed=4))
    rect = random_pattern(2, 9, 4, 0.0, seed=0)  # L > S: the scaled diagonal still keeps one key per row
    assert (rect.sum(-1) == 1).all()
    with pytest.raises(ValueError):
        build("random", density=1.5)


def test_global_pattern():
    att = build("global", global_indices=[0, 5, 40], window_size=3)
    p = att.pattern(10, 12, torch.device("cpu"))[0]
    i, j = torch.arange(10)[:, None], torch.arange(12)[None, :]
    expected = (i == 0) | (i == 5) | (j == 0) | (j == 5) | ((i - j).abs() <= 1)  # index 40 is beyond: ignored
    assert torch.equal(p, expected)
    only = build("global", num_global=3, window_size=0).pattern(6, 6, torch.device("cpu"))[0]
    assert only[:3].all() and only[:, :3].all() and not only[3:, 3:].any()
    for bad in (dict(num_global=0), dict(global_indices=[-1]), dict(window_size=-2)):
        with pytest.raises(ValueError):
            build("global", **bad)


@pytest.mark.parametrize("layout", ["fixed", "variable", "bigbird", "longformer", "local"])
def test_blocksparse_element_mask_is_expanded_layout(layout):
    att = build("blocksparse", layout=layout, block_size=4, different_per_head=True, num_random_blocks=2)
    nb = math.ceil(MAX_LEN / 4)
    assert att.layout.dtype == torch.bool and att.layout.shape[0] in (1, H) and att.layout.shape[1:] == (nb, nb)
    p = att.pattern(13, 30, torch.device("cpu"))
    i, j = torch.arange(13)[:, None], torch.arange(30)[None, :]
    assert torch.equal(p, att.layout[:, i // 4, j // 4])
    with pytest.raises(ValueError):
        att.pattern(MAX_LEN + 1, MAX_LEN + 1, torch.device("cpu"))  # beyond the layout


def test_blocksparse_custom_layout():
    layout = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    cfg = BlockSparseConfig(name="blocksparse", block_size=3, layout="custom", num_heads=H, head_dim=D)
    att = BlockSparseAttention(cfg, layout=layout).to(F64)
    q, k, v = qkv(8)
    keep = layout.repeat_interleave(3, 0).repeat_interleave(3, 1)[:8, :8]
    torch.testing.assert_close(att(q, k, v), torch_ref.attention(q, k, v, mask=keep), rtol=0, atol=1e-10)
    with pytest.raises(ValueError):
        BlockSparseAttention(cfg)  # custom needs the tensor
    with pytest.raises(ValueError):
        BlockSparseAttention(BlockSparseConfig(name="blocksparse", max_seq_len=9), layout=layout)
    with pytest.raises(ValueError):
        BlockSparseAttention(cfg, layout=layout.int())
    with pytest.raises(ValueError):
        build("blocksparse", layout="dilated")
    with pytest.raises(ValueError):
        blockzoo.build("attention", "blocksparse")  # no max_seq_len to size the layout


def test_alibi_slopes_and_bias():
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    s12 = alibi_slopes(12).tolist()
    assert s12[:8] == [2.0 ** -i for i in range(1, 9)]
    assert s12[8:] == pytest.approx([2.0 ** -(i + 0.5) for i in range(4)])
    att = blockzoo.build("attention", "alibi", num_heads=3, head_dim=D)
    bias = att.pattern(5, 7, torch.device("cpu"))
    i, j = torch.arange(5)[:, None], torch.arange(7)[None, :]
    expected = -alibi_slopes(3)[:, None, None] * (i - j).abs()
    torch.testing.assert_close(bias.double(), expected, rtol=1e-7, atol=0)
    with pytest.raises(ValueError):
        blockzoo.build("attention", "alibi")  # slopes need num_heads


# --------------------------------------------------------------------------------------------
# Layout helpers
# --------------------------------------------------------------------------------------------
grids = st.tuples(st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=30, deadline=None)
@given(grids, st.integers(1, 7))
def test_local_layout(grid, window):
    nr, nc = grid
    lay = layouts.local(nr, nc, window)
    r, c = torch.arange(nr)[:, None], torch.arange(nc)[None, :]
    assert lay.shape == (1, nr, nc) and torch.equal(lay[0], (r - c).abs() <= window // 2)


@settings(max_examples=30, deadline=None)
@given(grids, st.integers(1, 6), st.data())
def test_fixed_layout(grid, local_blocks, data):
    nr, nc = grid
    summary = data.draw(st.integers(1, local_blocks))
    heads = data.draw(st.integers(1, 4))
    lay = layouts.fixed(nr, nc, local_blocks, summary, heads, different_per_head=True)
    assert lay.shape == (heads, nr, nc)
    r, c = torch.arange(nr)[:, None], torch.arange(nc)[None, :]
    own_chunk = r // local_blocks == c // local_blocks
    from_end = ((c // local_blocks + 1) * local_blocks).clamp_max(nc) - 1 - c  # 0: a chunk's last block (short too)
    for h in range(heads):  # head h: its own chunk plus `summary` columns per chunk, shifted back per head
        first = (h % (local_blocks // summary)) * summary
        summary_cols = (from_end >= first) & (from_end < first + summary)
        assert torch.equal(lay[h], own_chunk | summary_cols)
    shared = layouts.fixed(nr, nc, local_blocks, summary)
    assert shared.shape == (1, nr, nc) and torch.equal(shared[0], lay[0])


def test_fixed_layout_short_last_chunk_has_its_summary_column():
    """7 blocks in chunks of 4: the last chunk is blocks 4-6, so block 6 is a summary column for rows 0-3."""
    lay = layouts.fixed(7, 7, local_blocks=4, num_summary_blocks=1)[0]
    assert lay[:4, 6].all() and lay[:4, 3].all() and not lay[:4, 4:6].any()
    assert lay[4:, 3].all() and lay[4:, 4:].all() and not lay[4:, :3].any()


@settings(max_examples=30, deadline=None)
@given(grids, st.integers(1, 5), st.integers(0, 3), st.integers(1, 3), st.integers(0, 100))
def test_bigbird_layout(grid, window, n_random, heads, seed):
    nr, nc = grid
    lay = layouts.bigbird(nr, nc, window, [0], n_random, heads, seed)
    assert lay.shape == ((heads if n_random else 1), nr, nc)
    assert lay[:, 0, :].all() and lay[:, :, 0].all()  # global block 0
    band = layouts.local(nr, nc, window)
    assert (lay | ~band).all()  # the window is kept
    extra = lay & ~band
    extra[:, 0, :] = False
    extra[:, :, 0] = False
    assert (extra.sum(-1) <= n_random).all()  # at most n random blocks per row beyond window/global
    assert torch.equal(lay, layouts.bigbird(nr, nc, window, [0], n_random, heads, seed))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), st.lists(st.integers(0, 11), min_size=1, max_size=3))
def test_longformer_layout(n, window, global_idx):
    global_idx = [g % n for g in global_idx]
    lay = layouts.longformer(n, n, window, global_idx)
    assert lay.shape == (1, n, n)
    assert torch.equal(lay[0], lay[0].T)  # symmetric on a square grid
    assert lay[0, global_idx].all() and lay[0][:, global_idx].all()
    assert lay[0].diagonal().all()


@settings(max_examples=30, deadline=None)
@given(grids, st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(0, 2))
def test_variable_layout(grid, sizes, n_random):
    nr, nc = grid
    lay = layouts.variable(nr, nc, sizes, [0], n_random, num_heads=2, seed=0)
    assert lay.shape == ((2 if n_random else 1), nr, nc)
    assert lay[:, 0].all() and lay[:, :, 0].all()
    bounds = [0]
    while bounds[-1] < max(nr, nc):
        bounds.append(bounds[-1] + sizes[min(len(bounds) - 1, len(sizes) - 1)])
    for lo, hi in zip(bounds, bounds[1:]):
        assert lay[:, lo:min(hi, nr), lo:min(hi, nc)].all()  # each local window is dense


def test_layout_arguments_checked():
    for call in (lambda: layouts.local(0, 4), lambda: layouts.local(4, 4, 0), lambda: layouts.fixed(4, 4, 2, 3),
                 lambda: layouts.bigbird(4, 4, 3, [9]), lambda: layouts.variable(4, 4, []),
                 lambda: layouts.bigbird(4, 4, 3, [0], -1)):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        layouts.expand_layout(layouts.local(2, 2), 4, 9, 8)


# --------------------------------------------------------------------------------------------
# Through the configs and a model
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_builds_in_a_model_from_compose(name, tmp_path):
    cfg = blockzoo.compose([f"attention={name}", "model=tiny_lm", TASK, "model.vocab_size=32", "model.dim_model=32",
                            "model.num_layers=2", "model.max_seq_len=32", "model.num_kv_heads=2"])
    assert cfg.attention.name == name
    model = blockzoo.build_model(cfg)
    tokens = torch.randint(0, 32, (2, 32))
    assert_trains_and_reloads(model, {"tokens": tokens, "targets": tokens.roll(-1, 1)}, (tokens[:, :20],),
                              tmp_path / "ckpt")
