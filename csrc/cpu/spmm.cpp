// CPU csr_spmm: one task per (batch matrix, row) accumulating scaled rows of b in a widened buffer,
// four nonzeros per pass over the buffer.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace blockzoo::cpu {
namespace {

template <typename T>
void spmm_kernel(const SpmmArgs& r, T* out) {
  using Acc = at::opmath_type<T>;
  const Dims& d = r.d;
  const int32_t* row_offsets = r.row_offsets.const_data_ptr<int32_t>();
  const int32_t* col_indices = r.col_indices.const_data_ptr<int32_t>();
  const int32_t* perm = r.perm ? r.perm->const_data_ptr<int32_t>() : nullptr;
  const T* values = r.values.const_data_ptr<T>();
  const T* b = r.b.const_data_ptr<T>();
  const int64_t K = d.K;
  at::parallel_for(0, d.Z * d.M, row_grain(d), [&](int64_t begin, int64_t end) {
    std::vector<Acc> acc(K);
    for (int64_t zr = begin; zr < end; ++zr) {
      const int64_t z = zr / d.M, row = zr % d.M, g = z / d.heads;
      const int32_t* offs = row_offsets + g * (d.M + 1);
      const int32_t* cols = col_indices + g * d.P;
      const int32_t* pg = perm ? perm + g * d.P : nullptr;
      const T* vz = values + z * d.P;
      const T* bz = b + z * d.N * K;
      auto value = [&](int32_t j) { return static_cast<Acc>(vz[pg ? pg[j] : j]); };
      auto brow = [&](int32_t j) { return bz + static_cast<int64_t>(cols[j]) * K; };
      Acc* ac = acc.data();
      std::fill(acc.begin(), acc.end(), Acc(0));
      int32_t j = offs[row];
      for (; j + 4 <= offs[row + 1]; j += 4) {
        const Acc v0 = value(j), v1 = value(j + 1), v2 = value(j + 2), v3 = value(j + 3);
        const T *b0 = brow(j), *b1 = brow(j + 1), *b2 = brow(j + 2), *b3 = brow(j + 3);
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) {
          ac[k] += v0 * static_cast<Acc>(b0[k]) + v1 * static_cast<Acc>(b1[k]) + v2 * static_cast<Acc>(b2[k]) +
                   v3 * static_cast<Acc>(b3[k]);
        }
      }
      for (; j < offs[row + 1]; ++j) {
        const Acc v = value(j);
        const T* bp = brow(j);
#pragma omp simd
        for (int64_t k = 0; k < K; ++k) ac[k] += v * static_cast<Acc>(bp[k]);
      }
      T* o = out + zr * K;
      for (int64_t k = 0; k < K; ++k) o[k] = static_cast<T>(acc[k]);
    }
  });
}

at::Tensor spmm_cpu(const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& row_order,
                    const at::Tensor& values, const at::Tensor& b, const std::optional<at::Tensor>& perm,
                    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool check) {
  const SpmmArgs r = check_spmm(row_offsets, col_indices, row_order, values, b, perm, check);
  std::vector<int64_t> shape(values.sizes().begin(), values.sizes().end() - 1);
  shape.push_back(r.d.M);
  shape.push_back(r.d.K);
  at::Tensor out = b.new_empty(shape);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "csr_spmm_cpu",
                                  [&] { spmm_kernel<scalar_t>(r, out.mutable_data_ptr<scalar_t>()); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(blockzoo, CPU, m) { m.impl("csr_spmm", &spmm_cpu); }

}  // namespace blockzoo::cpu
