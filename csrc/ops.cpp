// The one registration file of blockzoo._C: every schema of the `blockzoo` namespace defined in C++.
//
// A CSR layout is given as int32 tensors: row_offsets (M+1) or (G, M+1), col_indices (P) or (G, P),
// row_order (M) or (G, M) (rows sorted by length, longest first). G = 1 is a layout shared by every
// batch matrix; G > 1 is one pattern per leading batch index (values (G, ..., P), padded to P entries,
// row_offsets[g, M] <= P). Dense operands are (..., rows, K); values are (..., P).
// Implementations: csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); fake and autograd rules in
// blockzoo/ops/sparse/ops.py. `check` (default true) validates the index values first (csrc/checks.h:
// a ValueError naming the first bad one, never a read out of bounds); the Python ops pass check=False for
// a SparseLayout, validated once when it was built. csr_transpose (once per layout) always validates.
#include <Python.h>
#include <torch/library.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "blockzoo compiled ops, registered as torch.ops.blockzoo.csr_*", -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(blockzoo, m) {
  m.set_python_module("blockzoo.ops.sparse.ops");
  // values (..., P) = scale * (a @ b^T) sampled at the layout's nonzeros; a (..., M, K), b (..., N, K).
  // The t_* arguments (the layout's transpose) are used only by the backward pass.
  m.def("csr_sddmm(Tensor row_offsets, Tensor col_indices, Tensor row_order, Tensor a, Tensor b, float scale, "
        "Tensor? t_row_offsets=None, Tensor? t_col_indices=None, Tensor? t_perm=None, "
        "Tensor? t_row_order=None, bool check=True) -> Tensor");
  // out (..., M, K) = S @ b with S's stored values values[..., perm[j]] (values[..., j] without perm).
  m.def("csr_spmm(Tensor row_offsets, Tensor col_indices, Tensor row_order, Tensor values, Tensor b, "
        "Tensor? perm=None, Tensor? t_row_offsets=None, Tensor? t_col_indices=None, Tensor? t_perm=None, "
        "Tensor? t_row_order=None, bool check=True) -> Tensor");
  // Row-wise softmax over each CSR row's values; padding entries are 0. A row of -inf (or no entries) gives
  // zeros; a NaN or +inf value gives a NaN row, as a dense softmax over the row's entries.
  m.def("csr_softmax(Tensor row_offsets, Tensor row_order, Tensor values, bool check=True) -> Tensor");
  m.def("csr_softmax_backward(Tensor row_offsets, Tensor row_order, Tensor out, Tensor grad_out, "
        "bool check=True) -> Tensor");
  // Transpose of the pattern: (row_offsets_t, col_indices_t, perm) with entry k of the transpose being
  // entry perm[k] of the original.
  m.def("csr_transpose(Tensor row_offsets, Tensor col_indices, int n_cols) -> (Tensor, Tensor, Tensor)");
}
