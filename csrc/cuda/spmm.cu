// CUDA csr_spmm: a sub-warp per (row, batch matrix) owns `lanes * V` output columns at a time. The
// sub-warp loads `lanes` (column, value) pairs with one coalesced access, broadcasts them by shuffles,
// and each lane accumulates V columns of the selected rows of b read with 16-byte vector loads (kUnroll
// rows in flight); the next group's pairs are prefetched while the current one is processed.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "common.cuh"

namespace blockzoo::cuda {
namespace {

constexpr int kUnroll = 4;  // rows of b in flight per lane

template <typename Acc>
struct Entry {
  int32_t col;
  Acc val;
};

/// Column and value (read through perm when given) of nonzero j; zeros past the row's end.
template <typename T, typename Acc = at::opmath_type<T>>
__device__ __forceinline__ Entry<Acc> fetch(const int32_t* __restrict__ cols, const T* __restrict__ values,
                                            const int32_t* __restrict__ perm, int32_t j, int32_t end) {
  if (j >= end) return {0, Acc(0)};
  return {cols[j], static_cast<Acc>(values[perm == nullptr ? j : perm[j]])};
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlock)
    spmm_kernel(const int32_t* __restrict__ row_offsets, const int32_t* __restrict__ col_indices,
                const int32_t* __restrict__ row_order, const T* __restrict__ values,
                const int32_t* __restrict__ perm, const T* __restrict__ b, T* __restrict__ out, Dims d, int lanes) {
  using Acc = at::opmath_type<T>;
  const SubWarp w(lanes);
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (kBlock / lanes) + w.row;
  if (i >= d.M) return;
  const int K = static_cast<int>(d.K), step = lanes * V;
  for (int64_t z = blockIdx.y; z < d.Z; z += gridDim.y) {
    const int64_t g = z / d.heads;
    const int32_t* offs = row_offsets + g * (d.M + 1);
    const int32_t* cols = col_indices + g * d.P;
    const int32_t* pg = perm == nullptr ? nullptr : perm + g * d.P;
    const int64_t r = row_order[g * d.M + i];
    const int32_t lo = offs[r], hi = offs[r + 1];
    const T* vz = values + z * d.P;
    const T* bz = b + z * d.N * K;
    T* orow = out + (z * d.M + r) * K;
    for (int c0 = 0; c0 < K; c0 += step) {
      const int k = c0 + w.lane * V;
      const bool active = k < K;
      Acc acc[V];
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] = 0;
      Entry<Acc> next = fetch(cols, vz, pg, lo + w.lane, hi);
      for (int32_t j0 = lo; j0 < hi; j0 += lanes) {
        const int cnt = min(lanes, hi - j0);
        const Entry<Acc> mine = next;  // lane t holds nonzero j0 + t
        next = fetch(cols, vz, pg, j0 + lanes + w.lane, hi);  // prefetch the next group
        for (int t = 0; t < cnt; t += kUnroll) {
          Acc v[kUnroll], bv[kUnroll][V];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int src = min(t + u, cnt - 1);
            const int32_t c = w.bcast(mine.col, src);
            const Acc val = w.bcast(mine.val, src);
            v[u] = t + u < cnt ? val : Acc(0);
            if (active && t + u < cnt) {
              load_vec<V>(bz + static_cast<int64_t>(c) * K + k, bv[u]);
            } else {
#pragma unroll
              for (int e = 0; e < V; ++e) bv[u][e] = 0;
            }
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
            for (int e = 0; e < V; ++e) acc[e] += v[u] * bv[u][e];
          }
        }
      }
      if (active) store_vec<V>(orow + k, acc);
    }
  }
}

template <typename T, int V>
void launch(const SpmmArgs& r, at::Tensor& out) {
  const int lanes = lanes_for((r.d.K + V - 1) / V);
  spmm_kernel<T, V><<<grid_for(r.d, lanes), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      r.row_offsets.const_data_ptr<int32_t>(), r.col_indices.const_data_ptr<int32_t>(),
      r.row_order.const_data_ptr<int32_t>(), r.values.const_data_ptr<T>(),
      r.perm ? r.perm->const_data_ptr<int32_t>() : nullptr, r.b.const_data_ptr<T>(), out.mutable_data_ptr<T>(), r.d,
      lanes);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor spmm_cuda(const at::Tensor& row_offsets, const at::Tensor& col_indices, const at::Tensor& row_order,
                     const at::Tensor& values, const at::Tensor& b, const std::optional<at::Tensor>& perm,
                     const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                     const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool check) {
  const SpmmArgs r = check_spmm(row_offsets, col_indices, row_order, values, b, perm, check);
  const c10::cuda::CUDAGuard guard(b.device());
  std::vector<int64_t> shape(values.sizes().begin(), values.sizes().end() - 1);
  shape.push_back(r.d.M);
  shape.push_back(r.d.K);
  at::Tensor out = b.new_empty(shape);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "csr_spmm_cuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    if (r.d.K % V == 0 && aligned16(r.b.const_data_ptr()) && aligned16(out.const_data_ptr())) {
      launch<scalar_t, V>(r, out);
    } else {
      launch<scalar_t, 1>(r, out);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(blockzoo, CUDA, m) { m.impl("csr_spmm", &spmm_cuda); }

}  // namespace blockzoo::cuda
