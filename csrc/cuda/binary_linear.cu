// CUDA kernel of pyopt::binary_linear (CUDA headers only; the torch binding is binary_linear_bind.cpp).
//
// One warp per output y[m, n]: lane l reads x[m, k] for k = l, l+32, ... (coalesced) and bit k of the packed
// weight row (byte k/8, bit k%8, LSB first; see pyopt/ops/binary_linear.py), so the float weight is never
// formed. Float activations accumulate +-x; binary activations count sign agreements
// (sign(x).sign(w) = agreements - disagreements) and sum |x| for beta = mean|x|. Warp shuffles reduce.
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void binary_linear_kernel(const float* __restrict__ x, const uint8_t* __restrict__ w,
                                     const float* __restrict__ alpha, const float* __restrict__ bias,
                                     float* __restrict__ y, int64_t M, int64_t N, int64_t K, int64_t KB,
                                     bool binary_activations) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t m = blockIdx.y;
  if (n >= N) return;  // whole warp leaves together
  const float* xr = x + m * K;
  const uint8_t* wr = w + n * KB;
  float acc = 0.0f, abs_sum = 0.0f;
  for (int64_t k = lane; k < K; k += 32) {
    const float xv = __ldg(xr + k);
    const bool bit = (__ldg(wr + (k >> 3)) >> (k & 7)) & 1;
    if (binary_activations) {
      acc += ((xv >= 0.0f) == bit) ? 1.0f : -1.0f;
      abs_sum += fabsf(xv);
    } else {
      acc += bit ? xv : -xv;
    }
  }
  acc = warp_sum(acc);
  abs_sum = warp_sum(abs_sum);
  if (lane == 0) {
    float v = alpha[n] * acc;
    if (binary_activations) v *= abs_sum / static_cast<float>(K > 0 ? K : 1);
    if (bias != nullptr) v += bias[n];
    y[m * N + n] = v;
  }
}

}  // namespace

namespace pyopt::cuda::binary {

// x: (M, K) float32, w: (N, ceil(K/8)) uint8, alpha/bias: (N) float32 (bias may be null), y: (M, N) float32.
cudaError_t binary_linear_f32(const float* x, const uint8_t* w, const float* alpha, const float* bias, float* y,
                              int64_t M, int64_t N, int64_t K, bool binary_activations, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (M > 65535) return cudaErrorInvalidValue;  // grid.y limit; the binding splits larger batches
  dim3 grid(static_cast<unsigned>((N + kWarpsPerBlock - 1) / kWarpsPerBlock), static_cast<unsigned>(M));
  binary_linear_kernel<<<grid, kWarpsPerBlock * 32, 0, stream>>>(x, w, alpha, bias, y, M, N, K, (K + 7) / 8,
                                                                  binary_activations);
  return cudaGetLastError();
}

}  // namespace pyopt::cuda::binary
