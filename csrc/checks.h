// Argument checks shared by the CPU and CUDA implementations (host code only).
// They guard shapes, dtypes and devices, and, with `check` (the ops' default), the index values: offsets,
// columns, row orders and permutations (`check_indices`: ATen ops on the op's device and one read back).
// The Python ops pass check=False: SparseLayout validated their layout once, when it was built.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <vector>
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

namespace detail {
/// Position (g, j) of the first true element of a (G, X) bool tensor on the CPU.
inline std::pair<int64_t, int64_t> first_true(const at::Tensor& bad) {
  const at::Tensor idx = bad.nonzero();
  return {idx[0][0].item<int64_t>(), idx[0][1].item<int64_t>()};
}

/// Raises the ValueError for the index value that failed (the error path: host copies are fine here).
inline void report_index(const char* op, const at::Tensor& ro, const at::Tensor& ci, int64_t N,
                         const at::Tensor& order, const at::Tensor& perm, int64_t P, const at::Tensor& bad) {
  const int64_t M = ro.size(1) - 1;
  const at::Tensor r = ro.cpu().to(at::kLong);
  const auto flags = bad.cpu();
  if (flags[0].item<bool>()) {
    const auto [g, j] = first_true(r.narrow(1, 0, 1).ne(0));
    BZ_CHECK_VALUE(false, op, ": row_offsets of pattern ", g, " must start at 0, got ", r[g][j].item<int64_t>());
  }
  if (flags[1].item<bool>()) {
    const auto [g, i] = first_true(r.narrow(1, 1, M).lt(r.narrow(1, 0, M)));
    BZ_CHECK_VALUE(false, op, ": row_offsets must be non-decreasing: pattern ", g, " row ", i, " goes from ",
                   r[g][i].item<int64_t>(), " to ", r[g][i + 1].item<int64_t>());
  }
  if (flags[2].item<bool>()) {
    const auto [g, j] = first_true(r.narrow(1, M, 1).gt(P));
    BZ_CHECK_VALUE(false, op, ": row_offsets of pattern ", g, " end at ", r[g][M].item<int64_t>(), " but only ", P,
                   " entries are stored");
  }
  if (flags[3].item<bool>()) {
    const at::Tensor c = ci.cpu().to(at::kLong);
    const at::Tensor pos = at::arange(c.size(1), c.options()).unsqueeze(0);
    const auto [g, j] = first_true(pos.lt(r.narrow(1, M, 1)) & (c.lt(0) | c.ge(N)));
    BZ_CHECK_VALUE(false, op, ": column ", c[g][j].item<int64_t>(), " of pattern ", g, " is outside [0, ", N,
                   ") (stored entry ", j, ")");
  }
  if (flags[4].item<bool>()) {
    const at::Tensor o = order.cpu().to(at::kLong);
    const auto [g, i] = first_true(std::get<0>(o.sort(1)).ne(at::arange(M, o.options()).unsqueeze(0)));
    BZ_CHECK_VALUE(false, op, ": row_order of pattern ", g, " must be a permutation of the rows [0, ", M,
                   "); its sorted entry ", i, " is ", std::get<0>(o.sort(1))[g][i].item<int64_t>());
  }
  const at::Tensor pm = perm.cpu().to(at::kLong);
  const auto [g, j] = first_true(pm.lt(0) | pm.ge(P));
  BZ_CHECK_VALUE(false, op, ": perm[", g, ", ", j, "] = ", pm[g][j].item<int64_t>(), " is outside [0, ", P, ")");
}
}  // namespace detail

namespace detail {
/// The six index flags of `check_indices` (see `report_index`) for CPU tensors: one serial pass each.
inline at::Tensor index_flags_cpu(const at::Tensor& ro, const at::Tensor& ci, int64_t N, const at::Tensor& order,
                                  const at::Tensor& perm, int64_t P) {
  const int64_t G = ro.size(0), M = ro.size(1) - 1;
  at::Tensor flags = at::zeros({6}, at::kBool);
  bool* bad = flags.mutable_data_ptr<bool>();
  const int32_t* r = ro.const_data_ptr<int32_t>();
  std::vector<char> seen(order.defined() ? M : 0);
  for (int64_t g = 0; g < G; ++g) {
    const int32_t* offs = r + g * (M + 1);
    bad[0] |= offs[0] != 0;
    for (int64_t i = 0; i < M; ++i) bad[1] |= offs[i + 1] < offs[i];
    bad[2] |= offs[M] > P;
    if (ci.defined()) {
      const int32_t* cols = ci.const_data_ptr<int32_t>() + g * P;
      const int64_t end = std::clamp<int64_t>(offs[M], 0, P);
      for (int64_t j = 0; j < end; ++j) bad[3] |= cols[j] < 0 || cols[j] >= N;
    }
    if (order.defined()) {
      std::fill(seen.begin(), seen.end(), 0);
      const int32_t* rows = order.const_data_ptr<int32_t>() + g * M;
      for (int64_t i = 0; i < M && !bad[4]; ++i) {
        bad[4] = rows[i] < 0 || rows[i] >= M || seen[rows[i]];
        if (!bad[4]) seen[rows[i]] = 1;
      }
    }
  }
  if (perm.defined()) {
    const int32_t* pm = perm.const_data_ptr<int32_t>();
    for (int64_t j = 0; j < perm.numel(); ++j) bad[5] |= pm[j] < 0 || pm[j] >= P;
  }
  return flags;
}

/// The same flags on any device with ATen ops (the CUDA ops' check: a few small kernels).
inline at::Tensor index_flags(const at::Tensor& ro, const at::Tensor& ci, int64_t N, const at::Tensor& order,
                              const at::Tensor& perm, int64_t P) {
  const int64_t M = ro.size(1) - 1;
  const at::Tensor no = at::zeros({}, ro.options().dtype(at::kBool));
  const at::Tensor ends = ro.narrow(1, M, 1);
  at::Tensor cols_bad = no, order_bad = no, perm_bad = no;
  if (ci.defined()) {
    const at::Tensor pos = at::arange(ci.size(1), ci.options().dtype(at::kLong)).unsqueeze(0);
    cols_bad = (pos.lt(ends) & (ci.lt(0) | ci.ge(N))).any();
  }
  if (order.defined()) {
    order_bad = std::get<0>(order.sort(1)).ne(at::arange(M, order.options()).unsqueeze(0)).any();
  }
  if (perm.defined()) perm_bad = (perm.lt(0) | perm.ge(P)).any();
  return at::stack({ro.narrow(1, 0, 1).ne(0).any(), ro.narrow(1, 1, M).lt(ro.narrow(1, 0, M)).any(),
                    ends.gt(P).any(), cols_bad, order_bad, perm_bad});
}
}  // namespace detail

/// Validates a raw call's index tensors, (G, X) int32 views as `as_groups` gives them (undefined: not an
/// argument): row_offsets start at 0, never decrease and end within P entries; the real entries' columns lie
/// in [0, N); row_order is a permutation of each pattern's rows; perm lies in [0, P). One serial pass on the
/// CPU; on a GPU a few small kernels and one read back to the host. The ValueError names the first bad value.
inline void check_indices(const char* op, const at::Tensor& ro, const at::Tensor& ci, int64_t N,
                          const at::Tensor& order, const at::Tensor& perm, int64_t P) {
  const at::Tensor bad = ro.is_cpu() ? detail::index_flags_cpu(ro, ci, N, order, perm, P)
                                     : detail::index_flags(ro, ci, N, order, perm, P);
  if (C10_UNLIKELY(bad.any().item<bool>())) detail::report_index(op, ro, ci, N, order, perm, P, bad);
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
                             const at::Tensor& row_order, const at::Tensor& a, const at::Tensor& b, bool check) {
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
  if (check) check_indices(op, r.row_offsets, r.col_indices, r.d.N, r.row_order, at::Tensor(), r.d.P);
  return r;
}

struct SpmmArgs {
  at::Tensor row_offsets, col_indices, row_order, values, b;
  std::optional<at::Tensor> perm;
  Dims d;
};

inline SpmmArgs check_spmm(const at::Tensor& row_offsets, const at::Tensor& col_indices,
                           const at::Tensor& row_order, const at::Tensor& values, const at::Tensor& b,
                           const std::optional<at::Tensor>& perm, bool check) {
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
  if (check) {
    check_indices(op, r.row_offsets, r.col_indices, r.d.N, r.row_order, r.perm.value_or(at::Tensor()), r.d.P);
  }
  return r;
}

struct SoftmaxArgs {
  at::Tensor row_offsets, row_order, x, y;  // y: the gradient for the backward
  Dims d;
};

/// Checks csr_softmax (grad undefined) and csr_softmax_backward (x = out, grad = grad_out).
inline SoftmaxArgs check_softmax(const char* op, const at::Tensor& row_offsets, const at::Tensor& row_order,
                                 const at::Tensor& x, const at::Tensor& grad, bool check) {
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
  if (check) check_indices(op, r.row_offsets, at::Tensor(), 0, r.row_order, at::Tensor(), r.d.P);
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
  check_indices(op, r.row_offsets, r.col_indices, r.N, at::Tensor(), at::Tensor(), r.P);  // once per layout
  return r;
}

/// Drops the group dim again when the layout was given 1-D.
inline at::Tensor like_input(const at::Tensor& t, const at::Tensor& input) {
  return input.dim() == 1 ? t.squeeze(0) : t;
}

}  // namespace blockzoo
