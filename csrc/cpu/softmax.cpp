// CPU csr_softmax and its backward: one task per (batch matrix, row), accumulated in the op-math type.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace blockzoo::cpu {
namespace {

template <typename T>
void softmax_kernel(const SoftmaxArgs& r, T* out) {
  using Acc = at::opmath_type<T>;
  const Dims& d = r.d;
  const int32_t* row_offsets = r.row_offsets.const_data_ptr<int32_t>();
  const T* x = r.x.const_data_ptr<T>();
  at::parallel_for(0, d.Z * d.M, row_grain(d), [&](int64_t begin, int64_t end) {
    std::vector<Acc> e;  // the row's exponentials
    for (int64_t zr = begin; zr < end; ++zr) {
      const int64_t z = zr / d.M, row = zr % d.M;
      const int32_t* offs = row_offsets + (z / d.heads) * (d.M + 1);
      const int32_t lo = offs[row], n = offs[row + 1] - lo;
      const T* xr = x + z * d.P + lo;
      T* yr = out + z * d.P + lo;
      Acc mx = -std::numeric_limits<Acc>::infinity();
      for (int32_t j = 0; j < n; ++j) mx = std::max(mx, static_cast<Acc>(xr[j]));
      if (std::isinf(mx) && mx < 0) mx = 0;  // a row of -inf: e == 0 everywhere
      e.resize(n);
      Acc sum = 0;
      for (int32_t j = 0; j < n; ++j) sum += (e[j] = std::exp(static_cast<Acc>(xr[j]) - mx));
      // sum is 0 only for a row with nothing kept (zeros); a NaN or +inf value makes it NaN: a NaN row
      const bool live = sum != 0;
      const Acc inv = live ? Acc(1) / sum : Acc(0);
      for (int32_t j = 0; j < n; ++j) yr[j] = static_cast<T>(live ? e[j] * inv : Acc(0));
    }
  });
  zero_padding(out, row_offsets, d);
}

template <typename T>
void softmax_backward_kernel(const SoftmaxArgs& r, T* grad_in) {
  using Acc = at::opmath_type<T>;
  const Dims& d = r.d;
  const int32_t* row_offsets = r.row_offsets.const_data_ptr<int32_t>();
  const T* y = r.x.const_data_ptr<T>();
  const T* dy = r.y.const_data_ptr<T>();
  at::parallel_for(0, d.Z * d.M, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t zr = begin; zr < end; ++zr) {
      const int64_t z = zr / d.M, row = zr % d.M;
      const int32_t* offs = row_offsets + (z / d.heads) * (d.M + 1);
      const int64_t base = z * d.P;
      Acc dot = 0;
      for (int64_t j = base + offs[row]; j < base + offs[row + 1]; ++j)
        dot += static_cast<Acc>(y[j]) * static_cast<Acc>(dy[j]);
      for (int64_t j = base + offs[row]; j < base + offs[row + 1]; ++j)
        grad_in[j] = static_cast<T>(static_cast<Acc>(y[j]) * (static_cast<Acc>(dy[j]) - dot));
    }
  });
  zero_padding(grad_in, row_offsets, d);
}

at::Tensor softmax_cpu(const at::Tensor& row_offsets, const at::Tensor& row_order, const at::Tensor& values,
                       bool check) {
  const SoftmaxArgs r = check_softmax("csr_softmax", row_offsets, row_order, values, at::Tensor(), check);
  at::Tensor out = r.x.new_empty(values.sizes());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "csr_softmax_cpu",
                                  [&] { softmax_kernel<scalar_t>(r, out.mutable_data_ptr<scalar_t>()); });
  return out;
}

at::Tensor softmax_backward_cpu(const at::Tensor& row_offsets, const at::Tensor& row_order, const at::Tensor& out,
                                const at::Tensor& grad_out, bool check) {
  const SoftmaxArgs r = check_softmax("csr_softmax_backward", row_offsets, row_order, out, grad_out, check);
  at::Tensor grad_in = r.x.new_empty(out.sizes());
  if (grad_in.numel() == 0) return grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "csr_softmax_backward_cpu", [&] {
    softmax_backward_kernel<scalar_t>(r, grad_in.mutable_data_ptr<scalar_t>());
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(blockzoo, CPU, m) {
  m.impl("csr_softmax", &softmax_cpu);
  m.impl("csr_softmax_backward", &softmax_backward_cpu);
}

}  // namespace blockzoo::cpu
