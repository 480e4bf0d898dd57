// Argument checks shared by the CPU and CUDA implementations (host code only).
// They guard shapes, dtypes and devices; index values are validated once by SparseLayout in Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>
#include <type_traits>

namespace blockzoo::detail {
// Error messages are assembled here with std::to_string, never through an ostream: on the H200
// machine (torch 2.11+cu130, g++ 13.3) formatting a number into c10::str's ostringstream from this
// extension crashed the process (string pieces were fine; an int or a sizes() list segfaulted).
inline std::string piece(const char* s) { return s; }
inline std::string piece(const std::string& s) { return s; }
inline std::string piece(at::ScalarType t) { return c10::toString(t); }
inline std::string piece(const c10::Device& d) { return d.str(); }
inline std::string piece(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}
template <typename T, std::enable_if_t<std::is_arithmetic_v<T>, int> = 0>
inline std::string piece(T v) { return std::to_string(v); }

template <typename... Args>
std::string message(const Args&... args) {
  std::string out;
  ((out += piece(args)), ...);
  return out;
}
}  // namespace blockzoo::detail

// Argument checks: ValueError / TypeError in Python, message built only on failure.
#define BZ_CHECK_VALUE(cond, ...)                                                     \
  do {                                                                                \
    if (C10_UNLIKELY(!(cond))) TORCH_CHECK_VALUE(false, ::blockzoo::detail::message(__VA_ARGS__)); \
  } while (0)
#define BZ_CHECK_TYPE(cond, ...)                                                      \
  do {                                                                                \
    if (C10_UNLIKELY(!(cond))) TORCH_CHECK_TYPE(false, ::blockzoo::detail::message(__VA_ARGS__)); \
  } while (0)

namespace blockzoo {

/// Sizes the kernels use: Z batch matrices of M rows; batch matrix z uses layout group g = z / heads.
struct Dims {
  int64_t G = 1, M = 0, N = 0, K = 0, P = 0, Z = 0, heads = 1;
};

/// A layout index tensor (int32, 1-D shared or 2-D per batch) viewed as (G, len), contiguous.
inline at::Tensor as_groups(const char* op, const char* name, const at::Tensor& t) {
  BZ_CHECK_TYPE(t.scalar_type() == at::kInt, op, ": ", name, " must be int32, got ", t.scalar_type());
  BZ_CHECK_VALUE(t.dim() == 1 || t.dim() == 2, op, ": ", name,
                    " must be 1-D (shared layout) or 2-D (per-batch layout), got shape ", t.sizes());
  return (t.dim() == 1 ? t.unsqueeze(0) : t).contiguous();
}

inline void check_float(const char* op, const char* name, const at::Tensor& t, int64_t min_dim) {
  const auto s = t.scalar_type();
  BZ_CHECK_TYPE(s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble, op, ": ", name,
                   " must be float16, bfloat16, float32 or float64, got ", s);
  BZ_CHECK_VALUE(t.dim() >= min_dim, op, ": ", name, " must have at least ", min_dim, " dims, got shape ",
                    t.sizes());
}

inline void check_same(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                       const at::Tensor& ref) {
  BZ_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name,
                    " is on ", ref.device());
}

inline int64_t batch_numel(const at::Tensor& t, int64_t tail) {
  int64_t n = 1;
  for (int64_t d = 0; d < t.dim() - tail; ++d) n *= t.size(d);
  return n;
}

/// G, M, P, Z and heads from the layout and the tensor whose leading (batch) dims are `ref`'s dims
/// before its last `tail` ones.
inline Dims layout_dims(const char* op, const at::Tensor& row_offsets, const at::Tensor& row_order, int64_t P,
                        const at::Tensor& ref, int64_t tail) {
  Dims d;
  d.G = row_offsets.size(0);
  d.M = row_offsets.size(1) - 1;
  d.P = P;
  BZ_CHECK_VALUE(d.G >= 1 && d.M >= 0, op, ": row_offsets needs at least one entry per pattern, got shape ",
                    row_offsets.sizes());
  BZ_CHECK_VALUE(row_order.size(0) == d.G && row_order.size(1) == d.M, op, ": row_order has shape ",
                    row_order.sizes(), " but row_offsets has shape ", row_offsets.sizes());
  d.Z = batch_numel(ref, tail);
  if (d.G > 1) {
    BZ_CHECK_VALUE(ref.dim() > tail && ref.size(0) == d.G, op, ": a per-batch layout of ", d.G,
                      " patterns needs a leading batch dim of ", d.G, ", got shape ", ref.sizes());
  }
  d.heads = d.Z / d.G;
  return d;
}

struct SddmmArgs {
  at::Tensor row_offsets, col_indices, row_order, a, b;
  Dims d;
};

inline SddmmArgs check_sddmm(const at::Tensor& row_offsets, const at::Tensor& col_indices,
                             const at::Tensor& row_order, const at::Tensor& a, const at::Tensor& b) {
  const char* op = "csr_sddmm";
  check_float(op, "a", a, 2);
  check_float(op, "b", b, 2);
  BZ_CHECK_VALUE(a.scalar_type() == b.scalar_type(), op, ": a is ", a.scalar_type(), " but b is ",
                    b.scalar_type());
  BZ_CHECK_VALUE(a.sizes().slice(0, a.dim() - 2) == b.sizes().slice(0, b.dim() - 2) && a.size(-1) == b.size(-1),
                    op, ": a ", a.sizes(), " and b ", b.sizes(), " must share batch dims and K");
  check_same(op, "b", b, "a", a);
  check_same(op, "row_offsets", row_offsets, "a", a);
  check_same(op, "col_indices", col_indices, "a", a);
  check_same(op, "row_order", row_order, "a", a);
  SddmmArgs r{as_groups(op, "row_offsets", row_offsets), as_groups(op, "col_indices", col_indices),
              as_groups(op, "row_order", row_order), a.contiguous(), b.contiguous(), {}};
  BZ_CHECK_VALUE(r.col_indices.size(0) == r.row_offsets.size(0), op, ": col_indices ", col_indices.sizes(),
                    " and row_offsets ", row_offsets.sizes(), " disagree on the number of patterns");
  r.d = layout_dims(op, r.row_offsets, r.row_order, r.col_indices.size(1), a, 2);
  BZ_CHECK_VALUE(a.size(-2) == r.d.M, op, ": a has ", a.size(-2), " rows but the layout has ", r.d.M);
  r.d.N = b.size(-2);
  r.d.K = a.size(-1);
  return r;
}

struct SpmmArgs {
  at::Tensor row_offsets, col_indices, row_order, values, b;
  std::optional<at::Tensor> perm;
  Dims d;
};

inline SpmmArgs check_spmm(const at::Tensor& row_offsets, const at::Tensor& col_indices,
                           const at::Tensor& row_order, const at::Tensor& values, const at::Tensor& b,
                           const std::optional<at::Tensor>& perm) {
  const char* op = "csr_spmm";
  check_float(op, "values", values, 1);
  check_float(op, "b", b, 2);
  BZ_CHECK_VALUE(values.scalar_type() == b.scalar_type(), op, ": values is ", values.scalar_type(),
                    " but b is ", b.scalar_type());
  BZ_CHECK_VALUE(values.sizes().slice(0, values.dim() - 1) == b.sizes().slice(0, b.dim() - 2), op, ": values ",
                    values.sizes(), " and b ", b.sizes(), " must share batch dims");
  check_same(op, "values", values, "b", b);
  check_same(op, "row_offsets", row_offsets, "b", b);
  check_same(op, "col_indices", col_indices, "b", b);
  check_same(op, "row_order", row_order, "b", b);
  SpmmArgs r{as_groups(op, "row_offsets", row_offsets), as_groups(op, "col_indices", col_indices),
             as_groups(op, "row_order", row_order), values.contiguous(), b.contiguous(), std::nullopt, {}};
  BZ_CHECK_VALUE(r.col_indices.size(0) == r.row_offsets.size(0) && r.col_indices.size(1) == values.size(-1), op,
                    ": col_indices ", col_indices.sizes(), " does not match row_offsets ", row_offsets.sizes(),
                    " and values ", values.sizes());
  if (perm.has_value()) {
    check_same(op, "perm", *perm, "b", b);
    r.perm = as_groups(op, "perm", *perm);
    BZ_CHECK_VALUE(r.perm->sizes() == r.col_indices.sizes(), op, ": perm ", perm->sizes(),
                      " must have the shape of col_indices ", col_indices.sizes());
  }
  r.d = layout_dims(op, r.row_offsets, r.row_order, r.col_indices.size(1), values, 1);
  r.d.N = b.size(-2);
  r.d.K = b.size(-1);
  return r;
}

struct SoftmaxArgs {
  at::Tensor row_offsets, row_order, x, y;  // y: the gradient for the backward
  Dims d;
};

/// Checks csr_softmax (grad undefined) and csr_softmax_backward (x = out, grad = grad_out).
inline SoftmaxArgs check_softmax(const char* op, const at::Tensor& row_offsets, const at::Tensor& row_order,
                                 const at::Tensor& x, const at::Tensor& grad) {
  check_float(op, "values", x, 1);
  check_same(op, "row_offsets", row_offsets, "values", x);
  check_same(op, "row_order", row_order, "values", x);
  SoftmaxArgs r{as_groups(op, "row_offsets", row_offsets), as_groups(op, "row_order", row_order), x.contiguous(),
                at::Tensor(), {}};
  if (grad.defined()) {
    BZ_CHECK_VALUE(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(), op, ": grad_out ",
                      grad.sizes(), " ", grad.scalar_type(), " must match out ", x.sizes(), " ", x.scalar_type());
    check_same(op, "grad_out", grad, "out", x);
    r.y = grad.contiguous();
  }
  r.d = layout_dims(op, r.row_offsets, r.row_order, x.size(-1), x, 1);
  return r;
}

struct TransposeArgs {
  at::Tensor row_offsets, col_indices;
  int64_t G, M, P, N;
};

inline TransposeArgs check_transpose(const at::Tensor& row_offsets, const at::Tensor& col_indices, int64_t n_cols) {
  const char* op = "csr_transpose";
  check_same(op, "col_indices", col_indices, "row_offsets", row_offsets);
  BZ_CHECK_VALUE(row_offsets.dim() == col_indices.dim(), op, ": row_offsets ", row_offsets.sizes(),
                    " and col_indices ", col_indices.sizes(), " must both be 1-D or both 2-D");
  BZ_CHECK_VALUE(n_cols >= 0, op, ": n_cols must be >= 0, got ", n_cols);
  TransposeArgs r{as_groups(op, "row_offsets", row_offsets), as_groups(op, "col_indices", col_indices), 0, 0, 0,
                  n_cols};
  r.G = r.row_offsets.size(0);
  r.M = r.row_offsets.size(1) - 1;
  r.P = r.col_indices.size(1);
  BZ_CHECK_VALUE(r.col_indices.size(0) == r.G && r.M >= 0, op, ": col_indices ", col_indices.sizes(),
                    " does not match row_offsets ", row_offsets.sizes());
  return r;
}

/// Drops the group dim again when the layout was given 1-D.
inline at::Tensor like_input(const at::Tensor& t, const at::Tensor& input) {
  return input.dim() == 1 ? t.squeeze(0) : t;
}

}  // namespace blockzoo
