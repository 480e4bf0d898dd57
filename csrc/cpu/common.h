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

/// Zeroes the padding entries [row_offsets[g, M], P) of every batch matrix's values.
template <typename T>
void zero_padding(T* values, const int32_t* row_offsets, const Dims& d) {
  for (int64_t z = 0; z < d.Z; ++z) {
    const int64_t nnz = row_offsets[(z / d.heads) * (d.M + 1) + d.M];
    std::fill(values + z * d.P + nnz, values + (z + 1) * d.P, T(0));
  }
}

}  // namespace blockzoo::cpu
