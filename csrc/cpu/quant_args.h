// Argument checks shared by the quant family's CPU kernels (csrc/cpu/quant.cpp) and CUDA bindings
// (csrc/cuda/quant_bind.cpp): the same conditions and messages as pyopt/_op_checks.py, as TORCH_CHECKs.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <utility>

namespace pyopt::quant_args {

// (qmin, qmax) of an int8 / uint8 output type.
inline std::pair<float, float> qrange(at::ScalarType dtype, const char* name) {
  TORCH_CHECK(dtype == at::kChar || dtype == at::kByte, name, " must be torch.int8 or torch.uint8, got ", dtype);
  return dtype == at::kChar ? std::pair{-128.0f, 127.0f} : std::pair{0.0f, 255.0f};
}

// float32(scale), which must be finite and > 0 (the kernels use 1.0f / float32(scale), as torch does).
inline float checked_scale(double scale, const char* name) {
  const float s = static_cast<float>(scale);
  TORCH_CHECK(std::isfinite(scale) && scale > 0 && std::isfinite(s) && s > 0, name,
              " must be finite and > 0 (as float32), got ", scale);
  return s;
}

inline void check_zero_point(int64_t zp, std::pair<float, float> range, const char* name) {
  TORCH_CHECK(zp >= range.first && zp <= range.second, name, " must be in [", range.first, ", ", range.second,
              "], got ", zp);
}

}  // namespace pyopt::quant_args
