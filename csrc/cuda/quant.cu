// CUDA kernels of the quant family. CUDA headers only (see quant.cuh); the rules are those of the CPU kernels
// (csrc/cpu/quant_simd.h, README "Quantize / dequantize"), with every rounding step explicit so that no
// compiler contraction or fast approximation can change a result: __fmaf_rn (per tensor), __fmul_rn then
// __fadd_rn (per channel/group/token), __fdiv_rn / __frcp_rn for scales, rintf (round half to even).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "cuda/float_convert.cuh"
#include "cuda/quant.cuh"

namespace pyopt::cuda::quant {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 65535;

using pyopt::cuda::narrow;
using pyopt::cuda::widen;

__device__ __forceinline__ float canonical_nan() { return __int_as_float(0x7fc00000); }

// round_half_even(clamp(v, lo, hi)); NaN -> nan_value.
__device__ __forceinline__ int32_t round_clamp(float v, float lo, float hi, float nan_value) {
  if (isnan(v)) v = nan_value;
  return static_cast<int32_t>(rintf(fminf(fmaxf(v, lo), hi)));
}

__device__ __forceinline__ int32_t quant_product(float x, float inv, float zp, float lo, float hi) {
  return round_clamp(__fadd_rn(__fmul_rn(x, inv), zp), lo, hi, 0.0f);
}

template <class In, bool kFma, bool kPerChannel>
__global__ void quantize_kernel(const In* __restrict__ x, uint8_t* __restrict__ q, int64_t n,
                                const float* __restrict__ inv, const float* __restrict__ zp, float inv0, float zp0,
                                int64_t C, int64_t inner, float lo, float hi) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    float s = inv0, z = zp0;
    if (kPerChannel) {
      const int64_t c = (i / inner) % C;
      s = inv[c];
      z = zp[c];
    }
    const float xv = widen(x[i]);
    const int32_t r = kFma ? round_clamp(__fmaf_rn(xv, s, z), lo, hi, hi) : quant_product(xv, s, z, lo, hi);
    q[i] = static_cast<uint8_t>(r);
  }
}

template <class Out, bool kSigned, bool kPerChannel, bool kF64>
__global__ void dequantize_kernel(const uint8_t* __restrict__ q, Out* __restrict__ out, int64_t n,
                                  const float* __restrict__ scale, const double* __restrict__ scale64,
                                  const float* __restrict__ zp, float scale0, float zp0, int64_t C, int64_t inner) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = kPerChannel ? (i / inner) % C : 0;
    const float qv = kSigned ? static_cast<float>(static_cast<int8_t>(q[i])) : static_cast<float>(q[i]);
    const float z = kPerChannel ? zp[c] : zp0;
    float v;
    if (kF64) {
      v = __double2float_rn(__dmul_rn(__dsub_rn(static_cast<double>(qv), static_cast<double>(z)), scale64[c]));
    } else {
      v = __fmul_rn(__fsub_rn(qv, z), kPerChannel ? scale[c] : scale0);
    }
    out[i] = narrow<Out>(v);
  }
}

// NaN-aware min / max of a thread's strided share of x[0, n), then across the warp.
struct MinMax {
  float lo, hi;
  bool nan;
};

__device__ __forceinline__ MinMax warp_minmax(MinMax m) {
  for (int off = 16; off > 0; off >>= 1) {
    m.lo = fminf(m.lo, __shfl_xor_sync(0xffffffffu, m.lo, off));
    m.hi = fmaxf(m.hi, __shfl_xor_sync(0xffffffffu, m.hi, off));
    m.nan = __any_sync(0xffffffffu, m.nan);
  }
  return m;
}

template <class In>
__device__ __forceinline__ MinMax strided_minmax(const In* x, int64_t n, int64_t first, int64_t step) {
  MinMax m{INFINITY, -INFINITY, false};
  for (int64_t i = first; i < n; i += step) {
    const float v = widen(x[i]);
    m.nan |= isnan(v);
    m.lo = fminf(m.lo, v);
    m.hi = fmaxf(m.hi, v);
  }
  return m;
}

// One block per row: block-wide absmax, then the row's quantization.
template <class In>
__global__ void per_token_kernel(const In* __restrict__ x, int8_t* __restrict__ q, float* __restrict__ scales,
                                 int64_t K) {
  __shared__ MinMax partial[kThreads / 32];
  __shared__ float row_inv;
  const In* xr = x + blockIdx.x * K;
  MinMax m = warp_minmax(strided_minmax(xr, K, threadIdx.x, blockDim.x));
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    MinMax t{INFINITY, -INFINITY, false};
    for (int w = 0; w < kThreads / 32; ++w) {
      t.lo = fminf(t.lo, partial[w].lo);
      t.hi = fmaxf(t.hi, partial[w].hi);
      t.nan |= partial[w].nan;
    }
    const float amax = K == 0 ? 0.0f : fmaxf(-t.lo, t.hi);
    float scale = t.nan ? canonical_nan() : __fdiv_rn(amax, 127.0f);
    if (scale == 0.0f) scale = 1.0f;
    scales[blockIdx.x] = scale;
    row_inv = __frcp_rn(scale);
  }
  __syncthreads();
  const float inv = row_inv;
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x)
    q[blockIdx.x * K + i] = static_cast<int8_t>(quant_product(widen(xr[i]), inv, 0.0f, -127.0f, 127.0f));
}

// One warp per group: min/max, the observer's qparams (pyopt/ops/quant.py qparams_from_minmax), quantization.
template <class In>
__global__ void per_group_kernel(const In* __restrict__ x, uint8_t* __restrict__ q, float* __restrict__ scales,
                                 int64_t* __restrict__ zero_points, int64_t groups, int64_t gs, float qmin,
                                 float qmax, bool symmetric, bool is_uint8) {
  const int64_t g = blockIdx.x * int64_t{kThreads / 32} + threadIdx.x / 32;
  if (g >= groups) return;  // whole warps exit together
  const int lane = threadIdx.x % 32;
  const In* xg = x + g * gs;
  const MinMax m = warp_minmax(strided_minmax(xg, gs, lane, 32));
  float scale, zp;
  if (m.nan) {
    scale = canonical_nan();
    zp = symmetric && is_uint8 ? 128.0f : 0.0f;
  } else {
    const float min_neg = fminf(m.lo, 0.0f), max_pos = fmaxf(m.hi, 0.0f);
    if (symmetric) {
      scale = fmaxf(__fdiv_rn(fmaxf(-min_neg, max_pos), __fdiv_rn(qmax - qmin, 2.0f)), FLT_EPSILON);
      zp = is_uint8 ? 128.0f : 0.0f;
    } else {
      scale = fmaxf(__fdiv_rn(__fsub_rn(max_pos, min_neg), qmax - qmin), FLT_EPSILON);
      zp = qmin - rintf(__fdiv_rn(min_neg, scale));
      zp = isnan(zp) ? 0.0f : fminf(fmaxf(zp, qmin), qmax);
    }
  }
  if (lane == 0) {
    scales[g] = scale;
    zero_points[g] = static_cast<int64_t>(zp);
  }
  const float inv = __frcp_rn(scale);
  for (int64_t i = lane; i < gs; i += 32)
    q[g * gs + i] = static_cast<uint8_t>(quant_product(widen(xg[i]), inv, zp, qmin, qmax));
}

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

template <class F>
cudaError_t with_float_type(FloatType t, const F& f) {
  switch (t) {
    case kF32: return f(float{});
    case kF16: return f(__half{});
    case kBF16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t quantize(const void* x, FloatType x_type, uint8_t* q, int64_t n, const float* inv, const float* zp,
                     float inv0, float zp0, int64_t C, int64_t inner, float lo, float hi, bool fma_rule,
                     cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_float_type(x_type, [&](auto tag) {
    using In = decltype(tag);
    const In* xp = static_cast<const In*>(x);
    const int blocks = blocks_for(n);
    const bool per_channel = inv != nullptr;
    if (fma_rule && !per_channel)
      quantize_kernel<In, true, false><<<blocks, kThreads, 0, stream>>>(xp, q, n, inv, zp, inv0, zp0, C, inner, lo, hi);
    else if (fma_rule)
      quantize_kernel<In, true, true><<<blocks, kThreads, 0, stream>>>(xp, q, n, inv, zp, inv0, zp0, C, inner, lo, hi);
    else if (per_channel)
      quantize_kernel<In, false, true><<<blocks, kThreads, 0, stream>>>(xp, q, n, inv, zp, inv0, zp0, C, inner, lo, hi);
    else
      quantize_kernel<In, false, false><<<blocks, kThreads, 0, stream>>>(xp, q, n, inv, zp, inv0, zp0, C, inner, lo, hi);
    return cudaGetLastError();
  });
}

template <class Out, bool kSigned>
static void launch_dequantize(const uint8_t* q, Out* out, int64_t n, const float* scale, const double* scale64,
                              const float* zp, float scale0, float zp0, int64_t C, int64_t inner,
                              cudaStream_t stream) {
  const int blocks = blocks_for(n);
  if (scale64 != nullptr)
    dequantize_kernel<Out, kSigned, true, true>
        <<<blocks, kThreads, 0, stream>>>(q, out, n, scale, scale64, zp, scale0, zp0, C, inner);
  else if (scale != nullptr)
    dequantize_kernel<Out, kSigned, true, false>
        <<<blocks, kThreads, 0, stream>>>(q, out, n, scale, scale64, zp, scale0, zp0, C, inner);
  else
    dequantize_kernel<Out, kSigned, false, false>
        <<<blocks, kThreads, 0, stream>>>(q, out, n, scale, scale64, zp, scale0, zp0, C, inner);
}

cudaError_t dequantize(const uint8_t* q, bool q_signed, void* out, FloatType out_type, int64_t n, const float* scale,
                       const double* scale64, const float* zp, float scale0, float zp0, int64_t C, int64_t inner,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_float_type(out_type, [&](auto tag) {
    using Out = decltype(tag);
    Out* op = static_cast<Out*>(out);
    if (q_signed)
      launch_dequantize<Out, true>(q, op, n, scale, scale64, zp, scale0, zp0, C, inner, stream);
    else
      launch_dequantize<Out, false>(q, op, n, scale, scale64, zp, scale0, zp0, C, inner, stream);
    return cudaGetLastError();
  });
}

cudaError_t quantize_per_token(const void* x, FloatType x_type, int8_t* q, float* scales, int64_t rows, int64_t K,
                               cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return with_float_type(x_type, [&](auto tag) {
    using In = decltype(tag);
    for (int64_t r0 = 0; r0 < rows; r0 += kMaxBlocks) {  // grid.x is limited to 2^31-1; chunk to be safe
      const int64_t nr = rows - r0 < kMaxBlocks ? rows - r0 : kMaxBlocks;
      per_token_kernel<In><<<static_cast<unsigned>(nr), kThreads, 0, stream>>>(
          static_cast<const In*>(x) + r0 * K, q + r0 * K, scales + r0, K);
    }
    return cudaGetLastError();
  });
}

cudaError_t quantize_per_group(const void* x, FloatType x_type, uint8_t* q, float* scales, int64_t* zero_points,
                               int64_t groups, int64_t group_size, bool q_signed, bool symmetric,
                               cudaStream_t stream) {
  if (groups == 0) return cudaSuccess;
  const float qmin = q_signed ? -128.0f : 0.0f, qmax = q_signed ? 127.0f : 255.0f;
  constexpr int64_t kGroupsPerBlock = kThreads / 32;
  return with_float_type(x_type, [&](auto tag) {
    using In = decltype(tag);
    const int64_t chunk = kMaxBlocks * kGroupsPerBlock;
    for (int64_t g0 = 0; g0 < groups; g0 += chunk) {
      const int64_t ng = groups - g0 < chunk ? groups - g0 : chunk;
      const unsigned blocks = static_cast<unsigned>((ng + kGroupsPerBlock - 1) / kGroupsPerBlock);
      per_group_kernel<In><<<blocks, kThreads, 0, stream>>>(static_cast<const In*>(x) + g0 * group_size,
                                                            q + g0 * group_size, scales + g0, zero_points + g0, ng,
                                                            group_size, qmin, qmax, symmetric, !q_signed);
    }
    return cudaGetLastError();
  });
}

}  // namespace pyopt::cuda::quant
