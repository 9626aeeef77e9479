// CSR SpMM for CUDA: y[m, n] = bias[n] + sum_j values[j] * x[m, col[j]] over the nonzeros j of weight row n.
//
// One warp per output row n and per tile of kRowsPerWarp rows of x: lanes stride over the row's nonzeros
// (coalesced col/values reads), gather x[m, col] through the read-only cache, and reduce with shuffles.
// This suits the unstructured sparsity and small M (decode) where a dense GEMM is bandwidth bound.
// Includes only CUDA headers; sparse_bind.cpp (the torch side) checks arguments and calls the launcher.
#include <cuda_runtime.h>

#include <cstdint>

namespace pyopt::cuda::sparse {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kRowsPerWarp = 4;  // rows of x per warp: each gathered col/value pair is reused 4 times

__global__ void csr_linear_kernel(const float* __restrict__ x, const int64_t* __restrict__ crow,
                                  const int32_t* __restrict__ col, const float* __restrict__ values,
                                  const float* __restrict__ bias, float* __restrict__ y, int64_t M, int64_t N,
                                  int64_t K) {
  const int lane = threadIdx.x % kWarp;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (n >= N) return;
  const int64_t begin = crow[n], end = crow[n + 1];
  const float b = bias != nullptr ? bias[n] : 0.f;
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * kRowsPerWarp; m0 < M;
       m0 += static_cast<int64_t>(gridDim.y) * kRowsPerWarp) {
    float acc[kRowsPerWarp] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t j = begin + lane; j < end; j += kWarp) {
      const int64_t c = col[j];
      const float v = values[j];
#pragma unroll
      for (int t = 0; t < kRowsPerWarp; ++t)
        if (m0 + t < M) acc[t] += v * __ldg(x + (m0 + t) * K + c);
    }
#pragma unroll
    for (int t = 0; t < kRowsPerWarp; ++t) {
      float s = acc[t];
      for (int off = kWarp / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0 && m0 + t < M) y[(m0 + t) * N + n] = s + b;
    }
  }
}

}  // namespace

// x [M, K], crow [N+1], col [nnz] (in [0, K), checked by the caller), values [nnz], bias [N] or null,
// y [M, N]; all contiguous device pointers. Returns the launch error, if any.
cudaError_t csr_linear_launch(const float* x, const int64_t* crow, const int32_t* col,
                                           const float* values, const float* bias, float* y, int64_t M, int64_t N,
                                           int64_t K, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  const int64_t m_tiles = (M + kRowsPerWarp - 1) / kRowsPerWarp;
  const dim3 grid(static_cast<unsigned>((N + kWarpsPerBlock - 1) / kWarpsPerBlock),
                  static_cast<unsigned>(m_tiles < 65535 ? m_tiles : 65535));
  csr_linear_kernel<<<grid, kWarp * kWarpsPerBlock, 0, stream>>>(x, crow, col, values, bias, y, M, N, K);
  return cudaGetLastError();
}

}  // namespace pyopt::cuda::sparse
