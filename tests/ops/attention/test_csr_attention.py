"""CSR masks and the CSR (gather) Triton attention kernels (interpreter: fp32 / fp16) against float64."""
import pytest
import torch

from blockzoo.ops.sparse.csr_mask import CsrMask
from blockzoo.ops.sparse import SparseLayout
from blockzoo.ops.triton.csr_attention import csr_attention
from helpers import assert_attention_matches


def test_csr_mask_reads_layouts():
    shared = SparseLayout.from_mask(torch.rand(6, 5) < 0.5)
    assert (CsrMask.of_layout(shared, 3, 4).batch, CsrMask.of_layout(shared, 3, 4).heads) == (1, 1)
    per_batch = SparseLayout.from_mask(torch.rand(3, 6, 5) < 0.5)
    assert CsrMask.of_layout(per_batch, 3, 4).group_strides(3, 4) == (1, 0)
    per_head = SparseLayout.from_mask(torch.rand(12, 6, 5) < 0.5)
    assert CsrMask.of_layout(per_head, 3, 4).group_strides(3, 4) == (4, 1)
    with pytest.raises(ValueError, match="patterns"):
        CsrMask.of_layout(per_head, 2, 4)
    m = CsrMask.from_mask(torch.rand(2, 1, 6, 5) < 0.5)
    assert m.t_row_offsets.shape == (2, 6) and m.t_col_indices.shape == m.col_indices.shape


def _tricky(batch: int, heads: int, L: int, S: int, density: float) -> torch.Tensor:
    m = torch.rand(batch, heads, L, S) < density
    m[..., 1, :] = False
    m[..., 2, :] = True
    m[..., 3, :] = False
    m[..., 3, S // 3] = True
    return m


CASES = [
    # (name, B, H, HK, L, S, D, dtype, causal, transposed)
    ("per-batch, GQA, L!=S", 2, 4, 2, 100, 75, 32, torch.float32, False, False),
    ("per-head, fp16, strided", 1, 2, 2, 64, 64, 32, torch.float16, False, True),
    ("causal + mask, odd L", 1, 1, 1, 257, 257, 32, torch.float32, True, False),
    ("shared, D=64, fp16", 1, 2, 1, 48, 80, 64, torch.float16, False, False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_csr_matches_reference(case):
    name, B, H, HK, L, S, D, dtype, causal, transposed = case
    if name.startswith("per-batch"):
        mask = _tricky(B, 1, L, S, 0.1)
    elif name.startswith("per-head"):
        mask = _tricky(1, H, L, S, 0.1)
    else:
        mask = _tricky(1, 1, L, S, 0.05)
    if transposed:
        q, k, v = (torch.randn(B, n, h, D, dtype=dtype).transpose(1, 2) for n, h in ((L, H), (S, HK), (S, HK)))
    else:
        q, k, v = (torch.randn(B, h, n, D, dtype=dtype) for n, h in ((L, H), (S, HK), (S, HK)))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    keep = mask & torch.ones(L, S, dtype=torch.bool).tril() if causal else mask
    pattern = CsrMask.from_mask(keep)
    out = csr_attention(q, k, v, pattern)
    assert_attention_matches(out, q, k, v, mask, causal)
    assert (out[..., 1, :] == 0).all() and (q.grad[..., 1, :] == 0).all()  # the empty row


def test_csr_rejects_mismatched_pattern():
    pattern = CsrMask.from_mask(torch.ones(1, 1, 8, 8, dtype=torch.bool))
    q = torch.randn(1, 1, 9, 16)
    with pytest.raises(ValueError, match="L=8"):
        csr_attention(q, q, q, pattern)
    q = torch.randn(2, 2, 8, 24)
    with pytest.raises(ValueError, match="head dim"):
        csr_attention(q, q, q, pattern)


def test_custom_ops_pass_opcheck():
    import blockzoo.ops.triton.csr_attention as csa

    L, S, D = 40, 36, 16
    m = CsrMask.from_mask(torch.rand(2, 1, L, S) < 0.3)
    q = torch.randn(2, 2, L, D, requires_grad=True)
    k, v = (torch.randn(2, 1, S, D, requires_grad=True) for _ in range(2))
    layout = (m.row_offsets, m.col_indices, m.row_order, m.t_row_offsets, m.t_col_indices, m.t_row_order,
              torch.ones(2, S, dtype=torch.uint8))
    params = (1, 0, 16, 0.25)
    torch.library.opcheck(csa._attention.op, (q, k, v, *layout, *params))
    o, lse = csa._attention.op(q, k, v, *layout, *params)
    torch.library.opcheck(csa._attention.backward_op, (torch.randn_like(o), q, k, v, o.detach(), lse, *layout, *params),
                          test_utils=("test_schema", "test_faketensor"))
