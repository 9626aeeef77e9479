// CUDA kernels of the int8 layers (launched from int8_linear_bind.cpp; this file includes CUDA headers only).
//
// quant_rows:   one block per row: amax reduction, scale = amax / 127 (1 if 0), q = clamp(rint(x * (1/scale)))
//               (__float2int_rn rounds half to even, as quantize_per_token's rule asks).
// dynamic GEMM: 64x64 output tile per 256-thread block, K in steps of 32 through shared memory, __dp4a
//               (4 int8 products into int32) per thread on a 4x4 register tile; fused epilogue
//               acc * sx[m] * sw[n] + bias[n] in the output dtype.
// weight-only:  GEMV for a few tokens: one warp per output row, int8 weights read 4 at a time (char4),
//               converted to float in registers, up to 4 tokens per pass; warp-shuffle reduction.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/float_convert.cuh"

namespace pyopt::cuda::int8 {
namespace {

using pyopt::cuda::narrow;
using pyopt::cuda::widen;

template <typename T>
__device__ __forceinline__ float load_f(const T* p) {
  return widen(*p);
}

constexpr int kQuantThreads = 256;

template <typename T>
__global__ void quant_rows_kernel(const T* __restrict__ x, int8_t* __restrict__ q, float* __restrict__ scales,
                                  int64_t K) {
  __shared__ float red[kQuantThreads / 32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * K;
  float amax = 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(load_f(xr + k)));
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
  __syncthreads();
  if (threadIdx.x < 32) {
    amax = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if (threadIdx.x == 0) red[0] = amax;
  }
  __syncthreads();
  float s = red[0] / 127.0f;
  s = s == 0.0f ? 1.0f : s;
  const float inv = 1.0f / s;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    int v = __float2int_rn(__fmul_rn(load_f(xr + k), inv));  // no FMA contraction: the product is rounded
    q[row * K + k] = static_cast<int8_t>(min(max(v, -127), 127));
  }
  if (threadIdx.x == 0) scales[row] = s;
}

constexpr int kTile = 64, kTileK = 32, kPad = 4;

template <typename T>
__global__ void __launch_bounds__(256) dynamic_gemm_kernel(const int8_t* __restrict__ a, const int8_t* __restrict__ w,
                                                           const float* __restrict__ sx, const float* __restrict__ sw,
                                                           const float* __restrict__ bias, T* __restrict__ out,
                                                           int64_t M, int64_t N, int64_t K) {
  __shared__ __align__(16) int8_t As[kTile][kTileK + kPad];
  __shared__ __align__(16) int8_t Ws[kTile][kTileK + kPad];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = int64_t(blockIdx.y) * kTile, n0 = int64_t(blockIdx.x) * kTile;
  int acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    // 64 x 32 bytes per operand: 8 bytes per thread, bounds-checked byte loads (any K, any alignment).
    for (int e = threadIdx.x * 8; e < threadIdx.x * 8 + 8; ++e) {
      const int r = e / kTileK, c = e % kTileK;
      const int64_t k = k0 + c;
      As[r][c] = (m0 + r < M && k < K) ? a[(m0 + r) * K + k] : int8_t(0);
      Ws[r][c] = (n0 + r < N && k < K) ? w[(n0 + r) * K + k] : int8_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kw = 0; kw < kTileK; kw += 4) {
      int av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        av[i] = *reinterpret_cast<const int*>(&As[ty * 4 + i][kw]);
        bv[i] = *reinterpret_cast<const int*>(&Ws[tx * 4 + i][kw]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx * 4 + j;
      if (n >= N) continue;
      float v = __fmul_rn(__fmul_rn(static_cast<float>(acc[i][j]), sx[m]), sw[n]);
      if (bias) v += bias[n];
      out[m * N + n] = narrow<T>(v);
    }
  }
}

constexpr int kWoWarps = 8, kWoTokens = 4;

template <typename T>
__global__ void __launch_bounds__(kWoWarps * 32) weight_only_gemv_kernel(
    const T* __restrict__ x, const int8_t* __restrict__ w, const float* __restrict__ sw,
    const float* __restrict__ bias, T* __restrict__ out, int64_t M, int64_t N, int64_t K) {
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(blockIdx.x) * kWoWarps + (threadIdx.x >> 5);
  const int64_t m0 = int64_t(blockIdx.y) * kWoTokens;
  if (n >= N) return;
  const int8_t* wr = w + n * K;
  float acc[kWoTokens] = {};
  const bool vec = (K % 4) == 0;  // rows start 4-byte aligned: char4 loads
  const int64_t kv = vec ? K : 0;
  for (int64_t k = int64_t(lane) * 4; k < kv; k += 128) {
    const char4 q4 = *reinterpret_cast<const char4*>(wr + k);
    const float w0 = q4.x, w1 = q4.y, w2 = q4.z, w3 = q4.w;
#pragma unroll
    for (int t = 0; t < kWoTokens; ++t) {
      if (m0 + t >= M) break;
      const T* xr = x + (m0 + t) * K + k;
      acc[t] += w0 * load_f(xr) + w1 * load_f(xr + 1) + w2 * load_f(xr + 2) + w3 * load_f(xr + 3);
    }
  }
  for (int64_t k = kv + lane; k < K; k += 32) {
    const float wk = wr[k];
#pragma unroll
    for (int t = 0; t < kWoTokens; ++t)
      if (m0 + t < M) acc[t] += wk * load_f(x + (m0 + t) * K + k);
  }
#pragma unroll
  for (int t = 0; t < kWoTokens; ++t) {
    float v = acc[t];
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0 && m0 + t < M) {
      v *= sw[n];
      if (bias) v += bias[n];
      out[(m0 + t) * N + n] = narrow<T>(v);
    }
  }
}

template <template <typename> class Launch, typename... Args>
void dispatch_dtype(int dtype, Args... args) {
  if (dtype == 0) Launch<float>::run(args...);
  else if (dtype == 1) Launch<__half>::run(args...);
  else Launch<__nv_bfloat16>::run(args...);
}

template <typename T>
struct QuantLaunch {
  static void run(const void* x, int8_t* q, float* s, int64_t M, int64_t K, cudaStream_t st) {
    quant_rows_kernel<T><<<dim3(unsigned(M)), kQuantThreads, 0, st>>>(static_cast<const T*>(x), q, s, K);
  }
};

template <typename T>
struct GemmLaunch {
  static void run(const int8_t* a, const int8_t* w, const float* sx, const float* sw, const float* bias, void* out,
                  int64_t M, int64_t N, int64_t K, cudaStream_t st) {
    dim3 grid(unsigned((N + kTile - 1) / kTile), unsigned((M + kTile - 1) / kTile));
    dynamic_gemm_kernel<T><<<grid, 256, 0, st>>>(a, w, sx, sw, bias, static_cast<T*>(out), M, N, K);
  }
};

template <typename T>
struct GemvLaunch {
  static void run(const void* x, const int8_t* w, const float* sw, const float* bias, void* out, int64_t M,
                  int64_t N, int64_t K, cudaStream_t st) {
    dim3 grid(unsigned((N + kWoWarps - 1) / kWoWarps), unsigned((M + kWoTokens - 1) / kWoTokens));
    weight_only_gemv_kernel<T><<<grid, kWoWarps * 32, 0, st>>>(static_cast<const T*>(x), w, sw, bias,
                                                                static_cast<T*>(out), M, N, K);
  }
};

}  // namespace

// dtype: 0 float32, 1 float16, 2 bfloat16. All pointers are device pointers of contiguous tensors.
void quant_rows(const void* x, int dtype, int8_t* q, float* scales, int64_t M, int64_t K,
                           cudaStream_t stream) {
  if (M > 0) dispatch_dtype<QuantLaunch>(dtype, x, q, scales, M, K, stream);
}

void dynamic_gemm(const int8_t* a, const int8_t* w, const float* sx, const float* sw, const float* bias,
                             void* out, int dtype, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  if (M > 0 && N > 0) dispatch_dtype<GemmLaunch>(dtype, a, w, sx, sw, bias, out, M, N, K, stream);
}

void weight_only_gemv(const void* x, const int8_t* w, const float* sw, const float* bias, void* out,
                                 int dtype, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  if (M > 0 && N > 0) dispatch_dtype<GemvLaunch>(dtype, x, w, sw, bias, out, M, N, K, stream);
}

}  // namespace pyopt::cuda::int8
