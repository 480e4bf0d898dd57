// CUDA csr_sddmm: a sub-warp per (row, batch matrix); each nonzero's row of b is read by the sub-warp
// with 16-byte vector loads (one coalesced segment per nonzero, kUnroll rows in flight), dotted with the
// row of a kept in registers and reduced by shuffles. The next group's column indices are prefetched;
// results of `lanes` consecutive nonzeros leave in one coalesced store.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "common.cuh"

namespace blockzoo::cuda {
namespace {

constexpr int kUnroll = 8;  // rows of b in flight per sub-warp

template <int V, typename Acc>
__device__ __forceinline__ Acc dot(const Acc (&x)[V], const Acc (&y)[V]) {
  Acc p = 0;
#pragma unroll
  for (int e = 0; e < V; ++e) p += x[e] * y[e];
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
  const bool has_k0 = k0 < K;  // lanes past K (K < lanes * V) load nothing
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
    Acc a0[V] = {};  // this lane's first K-slice of the a row, kept in registers
    if (has_k0) load_vec<V>(arow + k0, a0);
    int32_t next_col = lo + w.lane < hi ? cols[lo + w.lane] : 0;
    for (int32_t j0 = lo; j0 < hi; j0 += lanes) {
      const int cnt = min(lanes, hi - j0);
      const int32_t my_col = next_col;  // lane t holds the column of nonzero j0 + t
      next_col = j0 + lanes + w.lane < hi ? cols[j0 + lanes + w.lane] : 0;  // prefetch the next group
      Acc mine = 0;
      for (int t = 0; t < cnt; t += kUnroll) {
        // all loads first (a tail repeats the group's last column, always a valid row), then the math
        Acc bv[kUnroll][V] = {};
        int64_t brow[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          brow[u] = static_cast<int64_t>(w.bcast(my_col, min(t + u, cnt - 1))) * K;
          if (has_k0) load_vec<V>(bz + brow[u] + k0, bv[u]);
        }
        Acc p[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) p[u] = dot<V>(a0, bv[u]);
        for (int k = k0 + step; k < K; k += step) {  // K > lanes * V: later slices, the a row from L1
          Acc av[V];
          load_vec<V>(arow + k, av);
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            Acc bk[V];
            load_vec<V>(bz + brow[u] + k, bk);
            p[u] += dot<V>(av, bk);
          }
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
                      const std::optional<at::Tensor>&, bool check) {
  const SddmmArgs r = check_sddmm(row_offsets, col_indices, row_order, a, b, check);
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
