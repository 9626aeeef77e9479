#include <torch/library.h>
#include <ATen/ATen.h>
#include "cpu/cpu_isa.h"

namespace {
void quantize_per_tensor(const at::Tensor& x, at::Tensor& out, double scale, int64_t zp, int64_t isa) {
  TORCH_CHECK(x.is_contiguous() && out.is_contiguous(), "x and out must be contiguous");
  auto xf = x.to(at::kFloat);
  const float* px = xf.data_ptr<float>();
  float inv = 1.0f / (float)scale;
  int64_t n = x.numel();
  int lo = out.scalar_type() == at::kChar ? -128 : 0, hi = out.scalar_type() == at::kChar ? 127 : 255;
  uint8_t* po = (uint8_t*)out.data_ptr();
  for (int64_t i = 0; i < n; ++i) {
    float v = std::nearbyint(std::fma(px[i], inv, (float)zp));
    v = std::min(std::max(v, (float)lo), (float)hi);
    po[i] = (uint8_t)(int)v;
  }
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(pyopt_cpu, m) { m.def("quantize_per_tensor", &quantize_per_tensor); }
