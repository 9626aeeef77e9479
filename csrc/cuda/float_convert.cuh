// Float conversions shared by the CUDA kernels (CUDA headers only). Explicit intrinsics for half / bfloat16:
// torch's extension build defines __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__, so the
// implicit conversions do not exist there. Every narrowing rounds to nearest even.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace pyopt::cuda {

// to float (double stays double: the float64 SGD path computes in double)
template <typename T>
__device__ __forceinline__ float widen(T v) {
  return static_cast<float>(v);
}
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T narrow(float v);
template <>
__device__ __forceinline__ float narrow<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half narrow<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 narrow<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace pyopt::cuda
