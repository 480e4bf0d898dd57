"""The "fixed" layout's options (direction, horizontal global blocks, several global patterns) and the dense
layout against brute-force loops over their definitions; the blocksparse layout as a state_dict buffer."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import blockzoo
from blockzoo.blocks.attention import layouts
from blockzoo.config import ConfigError
from blockzoo.ops import torch_ref

F64 = torch.float64


def is_summary(x, n, local_blocks, summary, shift):
    """Block x is one of its chunk's summary blocks for a head of this shift: counted from the chunk's last
    block (the grid's last block for a short last chunk), blocks shift*summary .. (shift+1)*summary - 1."""
    chunk_end = min((x // local_blocks + 1) * local_blocks, n)
    back = chunk_end - 1 - x
    return shift * summary <= back < (shift + 1) * summary


def fixed_reference(nr, nc, local_blocks, summary, heads, per_head, direction, horizontal, patterns):
    out = torch.zeros(heads if per_head else 1, nr, nc, dtype=torch.bool)
    for h, r, c in itertools.product(range(out.shape[0]), range(nr), range(nc)):
        shift = h % (patterns or local_blocks // summary)
        keep = r // local_blocks == c // local_blocks or is_summary(c, nc, local_blocks, summary, shift)
        if horizontal:
            keep = keep or is_summary(r, nr, local_blocks, summary, shift)
        if direction == "unidirectional":
            keep = keep and c <= r
        out[h, r, c] = keep
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 11), st.integers(1, 11), st.integers(1, 6), st.data())
def test_fixed_layout_options_against_brute_force(nr, nc, local_blocks, data):
    summary = data.draw(st.integers(1, local_blocks))
    heads = data.draw(st.integers(1, 4))
    per_head = data.draw(st.booleans())
    direction = data.draw(st.sampled_from(layouts.DIRECTIONS))
    horizontal = direction == "bidirectional" and data.draw(st.booleans())
    patterns = data.draw(st.integers(0, local_blocks // summary)) if per_head else data.draw(st.integers(0, 1))
    got = layouts.fixed(nr, nc, local_blocks, summary, heads, per_head, direction, horizontal, patterns)
    want = fixed_reference(nr, nc, local_blocks, summary, heads, per_head, direction, horizontal, patterns)
    assert got.dtype == torch.bool and torch.equal(got, want)


def test_fixed_layout_by_hand():
    """8 blocks in chunks of 4, one summary block: blocks 3 and 7 (head 0) or 2 and 6 (head 1)."""
    uni = layouts.fixed(8, 8, 4, 1, num_heads=2, different_per_head=True, direction="unidirectional")
    assert torch.equal(uni[0, 5], torch.tensor([0, 0, 0, 1, 1, 1, 0, 0], dtype=torch.bool))
    assert torch.equal(uni[1, 6], torch.tensor([0, 0, 1, 0, 1, 1, 1, 0], dtype=torch.bool))
    horizontal = layouts.fixed(8, 8, 4, 1, horizontal_global=True)[0]
    assert horizontal[3].all() and horizontal[7].all() and horizontal[:, 3].all()
    assert torch.equal(horizontal[1], torch.tensor([1, 1, 1, 1, 0, 0, 0, 1], dtype=torch.bool))
    two = layouts.fixed(8, 8, 4, 1, num_heads=4, different_per_head=True, num_global_patterns=2)
    assert torch.equal(two[0], two[2]) and torch.equal(two[1], two[3]) and not torch.equal(two[0], two[1])


def test_dense_layout():
    for nr, nc in [(1, 1), (3, 5), (7, 2)]:
        lay = layouts.dense(nr, nc)
        assert lay.shape == (1, nr, nc) and lay.dtype == torch.bool and lay.all()
    with pytest.raises(ValueError):
        layouts.dense(0, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(direction="causal"), "direction"),
    (dict(direction="unidirectional", horizontal_global=True), "horizontal_global"),
    (dict(num_global_patterns=2), "different_per_head"),
    (dict(num_global_patterns=5, different_per_head=True), "num_global_patterns"),
])
def test_fixed_layout_refuses_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layouts.fixed(8, 8, 4, 1, num_heads=4, **kwargs)


def build(**fields):
    return blockzoo.build("attention", "blocksparse", num_heads=4, head_dim=8, max_seq_len=32, block_size=4,
                          **fields).to(F64)


@pytest.mark.parametrize("fields, ref", [
    (dict(layout="dense"), lambda: torch.ones(1, 8, 8, dtype=torch.bool)),
    (dict(layout="fixed", local_blocks=4, direction="unidirectional", different_per_head=True,
          num_global_patterns=2), lambda: fixed_reference(8, 8, 4, 1, 4, True, "unidirectional", False, 2)),
    (dict(layout="fixed", local_blocks=2, horizontal_global=True),
     lambda: fixed_reference(8, 8, 2, 1, 4, False, "bidirectional", True, 0)),
])
def test_blocksparse_attention_with_the_new_layouts(fields, ref):
    att = build(**fields)
    layout = ref()
    assert torch.equal(att.layout, layout)
    L = 30
    q, k, v = (torch.randn(2, 4, L, 8, dtype=F64, requires_grad=True) for _ in range(3))
    keep = layout.repeat_interleave(4, -2).repeat_interleave(4, -1)[:, :L, :L]
    out = att(q, k, v)
    expected = torch_ref.attention(q, k, v, mask=keep)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


@pytest.mark.parametrize("override, message", [
    ("attention.direction=forward", r"attention\.direction='forward'"),
    ("attention.layout=fixd", r"attention\.layout='fixd'.*did you mean 'fixed'"),
    ("attention.num_global_patterns=-1", r"attention\.num_global_patterns=-1"),
])
def test_config_errors_name_the_path(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg = blockzoo.compose(["attention=blocksparse", override, "model=tiny_lm", "~task", "model.vocab_size=16"])
        blockzoo.build_model(cfg)


# --------------------------------------------------------------------------------------------
# The layout in the state_dict
# --------------------------------------------------------------------------------------------
def test_layout_saves_and_loads_with_the_module():
    first = build(layout="bigbird", num_random_blocks=2, seed=1)
    other = build(layout="bigbird", num_random_blocks=2, seed=2)
    assert not torch.equal(first.layout, other.layout)  # the seed changes the random blocks
    state = first.state_dict()
    assert torch.equal(state["layout"], first.layout)
    q, k, v = (torch.randn(2, 4, 29, 8, dtype=F64) for _ in range(3))
    before = other(q, k, v)  # fills other's pattern cache with its own layout
    other.load_state_dict(state)
    assert torch.equal(other.layout, first.layout)
    torch.testing.assert_close(other(q, k, v), first(q, k, v), rtol=0, atol=0)
    assert not torch.allclose(before, other(q, k, v))


def test_layout_reloads_in_a_model(tmp_path):
    cfg = blockzoo.compose(["attention=blocksparse", "attention.block_size=4", "attention.seed=3", "model=tiny_lm",
                            "~task", "model.vocab_size=16", "model.dim_model=32", "model.num_layers=2",
                            "model.max_seq_len=32"])
    model = blockzoo.build_model(cfg).eval()
    assert any(name.endswith("layout") for name in model.state_dict())
    blockzoo.save(model, tmp_path / "m")
    cfg.attention.seed = 4
    rebuilt = blockzoo.build_model(cfg).eval()
    tokens = torch.randint(0, 16, (2, 32))
    assert not torch.equal(rebuilt(tokens), model(tokens))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(tokens), model(tokens))
    assert torch.equal(blockzoo.load(tmp_path / "m").eval()(tokens), model(tokens))


def test_integer_layout_loads_and_mismatches_name_the_buffer():
    att = build(layout="local", num_window_blocks=1)
    custom = torch.zeros(1, 8, 8, dtype=torch.int64)
    custom[0, :, 0] = 1
    custom[0].fill_diagonal_(2)
    att.load_state_dict({"layout": custom})
    assert torch.equal(att.layout, custom != 0)
    with pytest.raises(ValueError, match=r"layout: the saved block layout has shape \(1, 4, 4\)"):
        att.load_state_dict({"layout": torch.ones(1, 4, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"layout: a block layout is bool"):
        att.load_state_dict({"layout": torch.ones(1, 8, 8)})
    outer = torch.nn.Sequential(att)
    with pytest.raises(ValueError, match=r"0\.layout: the saved block layout"):
        outer.load_state_dict({"0.layout": torch.ones(4, 8, 8, dtype=torch.bool)})


def test_state_dict_without_a_layout_keeps_the_built_one():
    att = build(layout="fixed")
    built = att.layout.clone()
    result = att.load_state_dict({}, strict=True)
    assert result.missing_keys == [] and torch.equal(att.layout, built)
