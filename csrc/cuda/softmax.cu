// CUDA csr_softmax and its backward: a sub-warp per (row, batch matrix), its width matched to the mean
// row length (sub-warp tiling for short rows); max, sum and dot are reduced by shuffles in fp32/fp64.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <limits>

#include "common.cuh"

namespace blockzoo::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kBlock)
    softmax_kernel(const int32_t* __restrict__ row_offsets, const int32_t* __restrict__ row_order,
                   const T* __restrict__ x, T* __restrict__ y, Dims d, int lanes) {
  using Acc = at::opmath_type<T>;
  const SubWarp w(lanes);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (kBlock / lanes) + w.row;
  for (int64_t z = blockIdx.y; z < d.Z; z += gridDim.y) {
    const int64_t g = z / d.heads;
    const int32_t* offs = row_offsets + g * (d.M + 1);
    T* yz = y + z * d.P;
    zero_padding(yz, offs, d.M, d.P);
    if (i >= d.M) continue;
    const int64_t r = row_order[g * d.M + i];
    const int32_t lo = offs[r], hi = offs[r + 1];
    const T* xz = x + z * d.P;
    Acc mx = -std::numeric_limits<Acc>::infinity();
    for (int32_t j = lo + w.lane; j < hi; j += lanes) {
      const Acc v = static_cast<Acc>(xz[j]);
      mx = v > mx ? v : mx;
    }
    mx = w.max(mx);
    if (isinf(mx) && mx < 0) mx = 0;  // a row of -inf: every exp is 0
    Acc sum = 0;
    for (int32_t j = lo + w.lane; j < hi; j += lanes) sum += exp(static_cast<Acc>(xz[j]) - mx);
    sum = w.sum(sum);
    // sum is 0 only for a row with nothing kept (zeros); a NaN or +inf value makes it NaN: a NaN row
    const bool live = sum != Acc(0);
    const Acc inv = live ? Acc(1) / sum : Acc(0);
    for (int32_t j = lo + w.lane; j < hi; j += lanes) {
      yz[j] = static_cast<T>(live ? exp(static_cast<Acc>(xz[j]) - mx) * inv : Acc(0));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    softmax_backward_kernel(const int32_t* __restrict__ row_offsets, const int32_t* __restrict__ row_order,
                            const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, Dims d,
                            int lanes) {
  using Acc = at::opmath_type<T>;
  const SubWarp w(lanes);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (kBlock / lanes) + w.row;
  for (int64_t z = blockIdx.y; z < d.Z; z += gridDim.y) {
    const int64_t g = z / d.heads;
    const int32_t* offs = row_offsets + g * (d.M + 1);
    const int64_t base = z * d.P;
    zero_padding(dx + base, offs, d.M, d.P);
    if (i >= d.M) continue;
    const int64_t r = row_order[g * d.M + i];
    const int64_t lo = base + offs[r], hi = base + offs[r + 1];
    Acc dot = 0;
    for (int64_t j = lo + w.lane; j < hi; j += lanes) dot += static_cast<Acc>(y[j]) * static_cast<Acc>(dy[j]);
    dot = w.sum(dot);
    for (int64_t j = lo + w.lane; j < hi; j += lanes) {
      dx[j] = static_cast<T>(static_cast<Acc>(y[j]) * (static_cast<Acc>(dy[j]) - dot));
    }
  }
}

/// Sub-warp width from the mean stored row length (at least 4 lanes).
int softmax_lanes(const Dims& d) { return std::max(4, lanes_for(d.P / std::max<int64_t>(d.M, 1))); }

at::Tensor softmax_cuda(const at::Tensor& row_offsets, const at::Tensor& row_order, const at::Tensor& values,
                       bool check) {
  const SoftmaxArgs r = check_softmax("csr_softmax", row_offsets, row_order, values, at::Tensor(), check);
  const c10::cuda::CUDAGuard guard(values.device());
  at::Tensor out = r.x.new_empty(values.sizes());
  if (out.numel() == 0) return out;
  const int lanes = softmax_lanes(r.d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "csr_softmax_cuda", [&] {
    softmax_kernel<scalar_t><<<grid_for(r.d, lanes), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        r.row_offsets.const_data_ptr<int32_t>(), r.row_order.const_data_ptr<int32_t>(),
        r.x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), r.d, lanes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor softmax_backward_cuda(const at::Tensor& row_offsets, const at::Tensor& row_order, const at::Tensor& out,
                                 const at::Tensor& grad_out, bool check) {
  const SoftmaxArgs r = check_softmax("csr_softmax_backward", row_offsets, row_order, out, grad_out, check);
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor grad_in = r.x.new_empty(out.sizes());
  if (grad_in.numel() == 0) return grad_in;
  const int lanes = softmax_lanes(r.d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "csr_softmax_backward_cuda", [&] {
    softmax_backward_kernel<scalar_t><<<grid_for(r.d, lanes), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
        r.row_offsets.const_data_ptr<int32_t>(), r.row_order.const_data_ptr<int32_t>(),
        r.x.const_data_ptr<scalar_t>(), r.y.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>(), r.d,
        lanes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(blockzoo, CUDA, m) {
  m.impl("csr_softmax", &softmax_cuda);
  m.impl("csr_softmax_backward", &softmax_backward_cuda);
}

}  // namespace blockzoo::cuda
