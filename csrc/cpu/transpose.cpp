// CPU csr_transpose: a stable counting sort by column, one task per pattern.
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common.h"

namespace blockzoo::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> transpose_cpu(const at::Tensor& row_offsets,
                                                             const at::Tensor& col_indices, int64_t n_cols) {
  const TransposeArgs r = check_transpose(row_offsets, col_indices, n_cols);
  const int64_t G = r.G, M = r.M, P = r.P, N = r.N;
  at::Tensor ro_t = r.row_offsets.new_zeros({G, N + 1});
  at::Tensor ci_t = r.col_indices.new_zeros({G, P});
  at::Tensor perm = r.col_indices.new_empty({G, P});
  const int32_t* ro = r.row_offsets.const_data_ptr<int32_t>();
  const int32_t* ci = r.col_indices.const_data_ptr<int32_t>();
  int32_t* rt = ro_t.mutable_data_ptr<int32_t>();
  int32_t* ct = ci_t.mutable_data_ptr<int32_t>();
  int32_t* pt = perm.mutable_data_ptr<int32_t>();
  at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int32_t* offs = ro + g * (M + 1);
      const int32_t* cols = ci + g * P;
      int32_t* to = rt + g * (N + 1);
      const int32_t nnz = offs[M];
      for (int32_t j = 0; j < nnz; ++j) ++to[cols[j] + 1];
      for (int64_t c = 0; c < N; ++c) to[c + 1] += to[c];
      std::vector<int32_t> next(to, to + N);
      for (int64_t row = 0; row < M; ++row) {
        for (int32_t j = offs[row]; j < offs[row + 1]; ++j) {
          const int32_t pos = next[cols[j]]++;
          ct[g * P + pos] = static_cast<int32_t>(row);
          pt[g * P + pos] = j;
        }
      }
      for (int64_t pos = nnz; pos < P; ++pos) pt[g * P + pos] = static_cast<int32_t>(pos);  // padding maps to itself
    }
  });
  return {like_input(ro_t, row_offsets), like_input(ci_t, col_indices), like_input(perm, col_indices)};
}

}  // namespace

TORCH_LIBRARY_IMPL(blockzoo, CPU, m) { m.impl("csr_transpose", &transpose_cpu); }

}  // namespace blockzoo::cpu
