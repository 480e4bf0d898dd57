// CUDA csr_transpose (once per layout): each stored entry gets its row (binary search in row_offsets)
// and its column as a sort key (padding sorts last); a stable per-pattern sort by key then gives the
// transposed order, which keeps rows ascending within each column.
#include <torch/library.h>

#include <tuple>

#include "common.cuh"

namespace blockzoo::cuda {
namespace {

__global__ void entry_keys_kernel(const int32_t* __restrict__ row_offsets, const int32_t* __restrict__ col_indices,
                                  int32_t* __restrict__ rows, int64_t* __restrict__ keys, int64_t G, int64_t M,
                                  int64_t P, int64_t N) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= G * P) return;
  const int64_t g = idx / P, j = idx % P;
  const int32_t* offs = row_offsets + g * (M + 1);
  int64_t row = 0, key = N;  // padding: sorts after every column of its pattern
  if (j < offs[M]) {
    int64_t lo = 0, hi = M;  // the last row starting at or before j (empty rows before it are skipped)
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (offs[mid] <= j) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    row = lo;
    key = col_indices[idx];
  }
  rows[idx] = static_cast<int32_t>(row);
  keys[idx] = g * (N + 1) + key;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> transpose_cuda(const at::Tensor& row_offsets,
                                                              const at::Tensor& col_indices, int64_t n_cols) {
  const TransposeArgs r = check_transpose(row_offsets, col_indices, n_cols);
  const c10::cuda::CUDAGuard guard(row_offsets.device());
  const int64_t G = r.G, M = r.M, P = r.P, N = r.N;
  at::Tensor ro_t = r.row_offsets.new_zeros({G, N + 1});
  at::Tensor ci_t = r.col_indices.new_zeros({G, P});
  at::Tensor perm = r.col_indices.new_zeros({G, P});
  if (G * P > 0) {
    at::Tensor rows = r.col_indices.new_empty({G, P});
    at::Tensor keys = r.col_indices.new_empty({G, P}, at::kLong);
    const int64_t threads = 256, blocks = (G * P + threads - 1) / threads;
    entry_keys_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        r.row_offsets.const_data_ptr<int32_t>(), r.col_indices.const_data_ptr<int32_t>(),
        rows.mutable_data_ptr<int32_t>(), keys.mutable_data_ptr<int64_t>(), G, M, P, N);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto [sorted, order] = keys.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false);
    ci_t = rows.gather(1, order);
    perm = order.to(at::kInt);
    const at::Tensor counts = keys.view({-1}).bincount({}, G * (N + 1)).view({G, N + 1});
    ro_t.narrow(1, 1, N).copy_(counts.narrow(1, 0, N).cumsum(1));
  }
  return {like_input(ro_t, row_offsets), like_input(ci_t, col_indices), like_input(perm, col_indices)};
}

}  // namespace

TORCH_LIBRARY_IMPL(blockzoo, CUDA, m) { m.impl("csr_transpose", &transpose_cuda); }

}  // namespace blockzoo::cuda
