// Launchers of the quant family's CUDA kernels (csrc/cuda/quant.cu): raw pointers, sizes and a stream only,
// so quant.cu compiles with nvcc alone (make check-cuda); csrc/cuda/quant_bind.cpp wraps them for torch.
// Every pointer is to contiguous device memory. Element types: kF32 / kF16 / kBF16 for float data.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace pyopt::cuda::quant {

enum FloatType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// q[i] = clamp(rne(v)) with v = fma(x, inv, zp) (fma_rule: per tensor; NaN -> hi) or float32(x * inv) + zp
// (NaN -> 0). Per-element parameters: inv[c], zp[c] with c = (i / inner) % C when `inv` is not null,
// else the scalars inv0, zp0.
cudaError_t quantize(const void* x, FloatType x_type, uint8_t* q, int64_t n, const float* inv, const float* zp,
                     float inv0, float zp0, int64_t C, int64_t inner, float lo, float hi, bool fma_rule,
                     cudaStream_t stream);

// out[i] = (float32(q) - zp) * scale, narrowed to out_type; q signed (int8) or not (uint8). With scale64 (not
// null) the product is formed in float64 and rounded once (torch's per-channel dequantize).
cudaError_t dequantize(const uint8_t* q, bool q_signed, void* out, FloatType out_type, int64_t n, const float* scale,
                       const double* scale64, const float* zp, float scale0, float zp0, int64_t C, int64_t inner,
                       cudaStream_t stream);

// Per row of K: scale = amax|x| / 127 (0 -> 1), q = clamp(rne(float32(x * (1 / scale))), -127, 127).
cudaError_t quantize_per_token(const void* x, FloatType x_type, int8_t* q, float* scales, int64_t rows, int64_t K,
                               cudaStream_t stream);

// Per group of group_size: torch.ao observer qparams from the group's min/max, then the per-channel rule.
cudaError_t quantize_per_group(const void* x, FloatType x_type, uint8_t* q, float* scales, int64_t* zero_points,
                               int64_t groups, int64_t group_size, bool q_signed, bool symmetric,
                               cudaStream_t stream);

}  // namespace pyopt::cuda::quant
