"""sddmm_coo and SparseLayout.from_coo: forward and backward against a float64 dense product gathered at the
COO indices (any order, repeated entries), through the compiled kernels and the PyTorch fallback; index checks."""
import contextlib

import pytest
import torch
from helpers import TOL, rel_err

import blockzoo.ops
from blockzoo.ops import SparseLayout, sddmm, sddmm_coo
from blockzoo.ops.sparse.ops import EXT_AVAILABLE

BACKENDS = [pytest.param("auto", marks=pytest.mark.skipif(not EXT_AVAILABLE, reason="blockzoo._C is absent")),
            "torch"]


def coo(M, N, nnz, repeats=True):
    row, col = torch.randint(0, M, (nnz,)), torch.randint(0, N, (nnz,))
    if repeats and nnz > 2:
        row[-1], col[-1] = row[0], col[0]  # one entry twice
    return row, col


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, M, N, K, nnz", [((), 5, 7, 3, 11), ((2,), 9, 4, 16, 20), ((2, 3), 13, 13, 8, 40),
                                                  ((), 1, 1, 1, 1), ((3,), 6, 8, 5, 0)])
def test_forward_backward_against_dense_reference(batch, M, N, K, nnz, dtype, backend):
    a64 = torch.randn(*batch, M, K, dtype=torch.float64, requires_grad=True)
    b64 = torch.randn(*batch, N, K, dtype=torch.float64, requires_grad=True)
    row, col = coo(M, N, nnz)
    ref = 0.7 * (a64 @ b64.transpose(-1, -2))[..., row, col]
    grad = torch.randn(ref.shape, dtype=torch.float64)
    ref.backward(grad)
    a = a64.detach().to(dtype).requires_grad_()
    b = b64.detach().to(dtype).requires_grad_()
    with blockzoo.ops.force(backend) if backend == "torch" else contextlib.nullcontext():
        out = sddmm_coo(a, b, row, col, scale=0.7)
        out.backward(grad.to(dtype))
    assert out.shape == (*batch, nnz) and out.dtype == dtype
    tol = 4 * TOL[dtype] * max(1, K ** 0.5)
    if nnz:
        assert rel_err(out.detach(), ref.detach()) < tol
        assert rel_err(a.grad, a64.grad) < 2 * tol and rel_err(b.grad, b64.grad) < 2 * tol
    else:
        assert not a.grad.any() and not b.grad.any()


def test_gradcheck_float64():
    a = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    row, col = torch.tensor([3, 0, 2, 3, 0]), torch.tensor([5, 1, 1, 5, 0])
    assert torch.autograd.gradcheck(lambda x, y: sddmm_coo(x, y, row, col, 1.5), (a, b))


def test_non_contiguous_inputs():
    a = torch.randn(12, 10, dtype=torch.float64)[::2, ::2]  # (6, 5), strided
    b = torch.randn(5, 7, dtype=torch.float64).T  # (7, 5), transposed
    assert not a.is_contiguous() and not b.is_contiguous()
    row, col = coo(6, 7, 9)
    torch.testing.assert_close(sddmm_coo(a, b, row, col), (a @ b.T)[row, col], rtol=0, atol=1e-12)


def test_from_coo_layout_is_the_csr_of_the_entries():
    row, col = torch.tensor([2, 0, 2, 1, 0, 2]), torch.tensor([1, 3, 0, 1, 3, 1])
    layout, index = SparseLayout.from_coo(row, col, (4, 5))
    dense = torch.zeros(4, 5, dtype=torch.bool)
    dense[row, col] = True
    assert torch.equal(layout.to_dense(), dense) and layout.nnz == 4
    assert torch.equal(layout.row_offsets, torch.tensor([0, 1, 2, 4, 4], dtype=torch.int32))
    a, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(sddmm(a, b, layout)[index], (a @ b.T)[row, col], rtol=0, atol=1e-12)


@pytest.mark.parametrize("row, col, error, match", [
    (torch.tensor([0, 5]), torch.tensor([0, 1]), ValueError, r"row\[1\] = 5 is outside \[0, 5\)"),
    (torch.tensor([0, -1]), torch.tensor([0, 1]), ValueError, r"row\[1\] = -1"),
    (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 6]), ValueError, r"col\[2\] = 6 is outside \[0, 6\)"),
    (torch.tensor([0, 1]), torch.tensor([0]), ValueError, "row has 2 entries but col has 1"),
    (torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), ValueError, "row must be 1-D"),
    (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), TypeError, "row must hold integer indices"),
    ([0, 1], torch.tensor([0, 1]), TypeError, "row must be a torch.Tensor"),
])
def test_bad_indices_are_named(row, col, error, match):
    a, b = torch.randn(5, 3), torch.randn(6, 3)
    with pytest.raises(error, match=match):
        sddmm_coo(a, b, row, col)


def test_bad_operands_are_named():
    row, col = torch.tensor([0]), torch.tensor([0])
    with pytest.raises(TypeError, match="a has dtype"):
        sddmm_coo(torch.ones(2, 2, dtype=torch.int64), torch.randn(2, 2), row, col)
    with pytest.raises(ValueError, match="share batch dims and K"):
        sddmm_coo(torch.randn(2, 3), torch.randn(2, 4), row, col)
