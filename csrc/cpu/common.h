// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "../checks.h"

namespace blockzoo::cpu {

/// Rows per at::parallel_for chunk so that a chunk holds about 32K multiply-adds.
inline int64_t row_grain(const Dims& d) {
  constexpr int64_t kGrain = 32768;
  const int64_t per_row = (d.P / std::max<int64_t>(d.M, 1) + 1) * std::max<int64_t>(d.K, 1);
  return std::max<int64_t>(1, kGrain / per_row);
}

/// dot(a, b) over K elements with 16 independent partial sums (a single running sum would serialize on
/// the add latency); ``a`` is already widened to Acc.
template <typename Acc, typename T>
inline Acc dot(const Acc* a, const T* b, int64_t K) {
  constexpr int64_t kParts = 16;
  Acc part[kParts] = {};
  int64_t k = 0;
  for (; k + kParts <= K; k += kParts) {
    for (int64_t l = 0; l < kParts; ++l) part[l] += a[k + l] * static_cast<Acc>(b[k + l]);
  }
  Acc acc = 0;
  for (; k < K; ++k) acc += a[k] * static_cast<Acc>(b[k]);
  for (int64_t l = 0; l < kParts; ++l) acc += part[l];
  return acc;
}

/// Zeroes the padding entries [row_offsets[g, M], P) of every batch matrix's values.
template <typename T>
void zero_padding(T* values, const int32_t* row_offsets, const Dims& d) {
  for (int64_t z = 0; z < d.Z; ++z) {
    const int64_t nnz = row_offsets[(z / d.heads) * (d.M + 1) + d.M];
    std::fill(values + z * d.P + nnz, values + (z + 1) * d.P, T(0));
  }
}

}  // namespace blockzoo::cpu
