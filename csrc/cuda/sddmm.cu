// CUDA csr_sddmm: a sub-warp per (row, batch matrix); each nonzero's row of b is read by the sub-warp
// with 16-byte vector loads (one coalesced segment per nonzero), dotted with the row of a kept in
// registers and reduced by shuffles. Results of `lanes` consecutive nonzeros leave in one coalesced store.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "common.cuh"

namespace blockzoo::cuda {
namespace {

constexpr int kUnroll = 4;  // nonzeros in flight per sub-warp

/// This lane's share of dot(a row, b row): chunk 0 of the a row comes from registers, later chunks
/// (K > lanes * V) from memory.
template <int V, typename T, typename Acc>
__device__ __forceinline__ Acc partial_dot(const Acc (&a0)[V], const T* __restrict__ arow,
                                           const T* __restrict__ brow, int k0, int step, int K) {
  Acc p = 0;
  if (k0 < K) {
    Acc bv[V];
    load_vec<V>(brow + k0, bv);
#pragma unroll
    for (int e = 0; e < V; ++e) p += a0[e] * bv[e];
  }
  for (int k = k0 + step; k < K; k += step) {
    Acc av[V], bv[V];
    load_vec<V>(arow + k, av);
    load_vec<V>(brow + k, bv);
#pragma unroll
    for (int e = 0; e < V; ++e) p += av[e] * bv[e];
  }
  return p;
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
    sddmm_kernel(const int32_t* __restrict__ row_offsets, const int32_t* __restrict__ col_indices,
                 const int32_t* __restrict__ row_order, const T* __restrict__ a, const T* __restrict__ b,
                 T* __restrict__ out, Dims d, int lanes, double scale) {
  using Acc = at::opmath_type<T>;
  const SubWarp w(lanes);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (kBlock / lanes) + w.row;
  const int K = static_cast<int>(d.K), step = lanes * V, k0 = w.lane * V;
  const Acc s = static_cast<Acc>(scale);
  for (int64_t z = blockIdx.y; z < d.Z; z += gridDim.y) {
    const int64_t g = z / d.heads;
    const int32_t* offs = row_offsets + g * (d.M + 1);
    T* oz = out + z * d.P;
    zero_padding(oz, offs, d.M, d.P);
    if (i >= d.M) continue;
    const int32_t* cols = col_indices + g * d.P;
    const int64_t r = row_order[g * d.M + i];
    const int32_t lo = offs[r], hi = offs[r + 1];
    const T* arow = a + (z * d.M + r) * K;
    const T* bz = b + z * d.N * K;
    Acc a0[V];
    if (k0 < K) {
      load_vec<V>(arow + k0, a0);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) a0[e] = 0;
    }
    for (int32_t j0 = lo; j0 < hi; j0 += lanes) {
      const int cnt = min(lanes, hi - j0);
      const int32_t my_col = w.lane < cnt ? cols[j0 + w.lane] : 0;
      Acc mine = 0;
      for (int t = 0; t < cnt; t += kUnroll) {
        Acc p[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int32_t c = w.bcast(my_col, min(t + u, cnt - 1));
          p[u] = t + u < cnt ? partial_dot<V>(a0, arow, bz + static_cast<int64_t>(c) * K, k0, step, K) : Acc(0);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const Acc total = w.sum(p[u]);
          if (w.lane == t + u) mine = total;
        }
      }
      if (w.lane < cnt) oz[j0 + w.lane] = static_cast<T>(mine * s);
    }
  }
}

template <typename T, int V>
void launch(const SddmmArgs& r, double scale, at::Tensor& out) {
  const int lanes = lanes_for((r.d.K + V - 1) / V);
  sddmm_kernel<T, V><<<grid_for(r.d, lanes), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      r.row_offsets.const_data_ptr<int32_t>(), r.col_indices.const_data_ptr<int32_t>(),
      r.row_order.const_data_ptr<int32_t>(), r.a.const_data_ptr<T>(), r.b.const_data_ptr<T>(),
      out.mutable_data_ptr<T>(), r.d, lanes, scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor sddmm_cuda(const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& row_order,
                      const at::Tensor& a, const at::Tensor& b, double scale, const std::optional<at::Tensor>&,
                      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                      const std::optional<at::Tensor>&) {
  const SddmmArgs r = check_sddmm(row_offsets, col_indices, row_order, a, b);
  const c10::cuda::CUDAGuard guard(a.device());
  std::vector<int64_t> shape(a.sizes().begin(), a.sizes().end() - 2);
  shape.push_back(r.d.P);
  at::Tensor out = a.new_empty(shape);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "csr_sddmm_cuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    if (r.d.K % V == 0 && aligned16(r.a.const_data_ptr()) && aligned16(r.b.const_data_ptr())) {
      launch<scalar_t, V>(r, scale, out);
    } else {
      launch<scalar_t, 1>(r, scale, out);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(blockzoo, CUDA, m) { m.impl("csr_sddmm", &sddmm_cuda); }

}  // namespace blockzoo::cuda
