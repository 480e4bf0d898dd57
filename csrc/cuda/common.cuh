// Device helpers shared by the CUDA kernels: sub-warp geometry, 16-byte vector loads, reductions.
//
// Work split (Sputnik-style): a "sub-warp" of `lanes` threads (a power of two <= 32) owns one CSR row of
// one batch matrix; a 128-thread block holds 128 / lanes sub-warps, i.e. a 1-D tile of consecutive rows
// of the length-sorted row order (longest first), so blocks with similar work run together and the
// long rows start first. grid = (ceil(M / rows_per_block), min(Z, 65535)); blocks stride over Z.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "../checks.h"

namespace blockzoo::cuda {

constexpr int kBlock = 128;
constexpr int kMaxGridY = 65535;

/// Lane count per row: the smallest power of two covering `width` (clamped to [1, 32]).
inline int lanes_for(int64_t width) {
  int lanes = 1;
  while (lanes < 32 && lanes < width) lanes *= 2;
  return lanes;
}

inline dim3 grid_for(const Dims& d, int lanes) {
  const int64_t rows_per_block = kBlock / lanes;
  // at least one block in x: block 0 also zeroes the padding of layouts with no rows
  return dim3(static_cast<unsigned>(std::max<int64_t>(1, (d.M + rows_per_block - 1) / rows_per_block)),
              static_cast<unsigned>(std::min<int64_t>(d.Z, kMaxGridY)));
}

/// True when `ptr` is 16-byte aligned (vector loads need it, and K a multiple of the vector width).
inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

/// Sub-warp geometry of the calling thread.
struct SubWarp {
  int lanes, lane, row;  // lanes per row, this thread's lane, this sub-warp's position in the block
  unsigned mask;         // the sub-warp's lanes within the warp (for the *_sync intrinsics)

  __device__ explicit SubWarp(int lanes_) : lanes(lanes_) {
    lane = threadIdx.x & (lanes - 1);
    row = threadIdx.x / lanes;
    const int first = (threadIdx.x & 31) & ~(lanes - 1);
    mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u) << first;
  }

  template <typename A>
  __device__ __forceinline__ A sum(A v) const {
    for (int o = lanes / 2; o > 0; o /= 2) v += __shfl_xor_sync(mask, v, o, lanes);
    return v;
  }

  template <typename A>
  __device__ __forceinline__ A max(A v) const {
    for (int o = lanes / 2; o > 0; o /= 2) {
      const A other = __shfl_xor_sync(mask, v, o, lanes);
      v = other > v ? other : v;
    }
    return v;
  }

  template <typename V>
  __device__ __forceinline__ V bcast(V v, int src) const {
    return __shfl_sync(mask, v, src, lanes);
  }
};

/// Loads V consecutive scalars widened to Acc; a single 16-byte transaction when V * sizeof(T) == 16.
template <int V, typename T, typename Acc>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, Acc (&out)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = static_cast<Acc>(v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) out[i] = static_cast<Acc>(p[i]);
  }
}

/// Stores V values narrowed to T; a single 16-byte transaction when V * sizeof(T) == 16.
template <int V, typename T, typename Acc>
__device__ __forceinline__ void store_vec(T* p, const Acc (&in)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    uint4 raw;
    T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < V; ++i) v[i] = static_cast<T>(in[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = static_cast<T>(in[i]);
  }
}

/// Block 0 of each batch matrix zeroes the padding values [row_offsets[g, M], P) (per-batch layouts).
template <typename T>
__device__ __forceinline__ void zero_padding(T* values_z, const int32_t* offs, int64_t M, int64_t P) {
  if (blockIdx.x != 0) return;
  for (int64_t j = offs[M] + threadIdx.x; j < P; j += blockDim.x) values_z[j] = static_cast<T>(0.0f);
}

}  // namespace blockzoo::cuda
