// CPU csr_sddmm: one task per (batch matrix, row); the a row is widened once, dots use split partial sums.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "common.h"

namespace blockzoo::cpu {
namespace {

template <typename T>
void sddmm_kernel(const SddmmArgs& r, double scale, T* out) {
  using Acc = at::opmath_type<T>;
  const Dims& d = r.d;
  const int32_t* row_offsets = r.row_offsets.const_data_ptr<int32_t>();
  const int32_t* col_indices = r.col_indices.const_data_ptr<int32_t>();
  const T* a = r.a.const_data_ptr<T>();
  const T* b = r.b.const_data_ptr<T>();
  const Acc s = static_cast<Acc>(scale);
  const int64_t K = d.K;
  at::parallel_for(0, d.Z * d.M, row_grain(d), [&](int64_t begin, int64_t end) {
    std::vector<Acc> arow(K);
    for (int64_t zr = begin; zr < end; ++zr) {
      const int64_t z = zr / d.M, row = zr % d.M, g = z / d.heads;
      const int32_t* offs = row_offsets + g * (d.M + 1);
      const int32_t* cols = col_indices + g * d.P;
      const T* ap = a + zr * K;
      for (int64_t k = 0; k < K; ++k) arow[k] = static_cast<Acc>(ap[k]);
      const T* bz = b + z * d.N * K;
      T* o = out + z * d.P;
      for (int32_t j = offs[row]; j < offs[row + 1]; ++j) {
        o[j] = static_cast<T>(dot(arow.data(), bz + static_cast<int64_t>(cols[j]) * K, K) * s);
      }
    }
  });
  zero_padding(out, row_offsets, d);
}

at::Tensor sddmm_cpu(const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& row_order,
                     const at::Tensor& a, const at::Tensor& b, double scale, const std::optional<at::Tensor>&,
                     const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                     const std::optional<at::Tensor>&, bool check) {
  const SddmmArgs r = check_sddmm(row_offsets, col_indices, row_order, a, b, check);
  std::vector<int64_t> shape(a.sizes().begin(), a.sizes().end() - 2);
  shape.push_back(r.d.P);
  at::Tensor out = a.new_empty(shape);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "csr_sddmm_cpu",
                                  [&] { sddmm_kernel<scalar_t>(r, scale, out.mutable_data_ptr<scalar_t>()); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(blockzoo, CPU, m) { m.impl("csr_sddmm", &sddmm_cpu); }

}  // namespace blockzoo::cpu
