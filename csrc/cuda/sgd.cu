// CUDA multi-tensor SGD step (pyopt::fused_sgd_): one launch (per batch of 36 tensors / 320 chunks) applies
// SgdFunctor to every tensor through multi_tensor_apply.cuh. Numerics as csrc/cpu/sgd.cpp: widen to the
// compute type C (float; double for float64), g = grad * scale; g = fma(w, wd, g);
// b = first ? g : fma(g, 1 - dampening, b * mu); g = nesterov ? fma(b, mu, g) : b; w = fma(g, -lr, w);
// masked-out entries of w (and master) and b become 0. Hyperparameters are read from a device float64 array
// (so a tensor lr and GradScaler's scale need no host sync) and found_inf != 0 makes the kernel a no-op.
// CUDA headers only: csrc/cuda/sgd_bind.cpp passes raw pointers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/float_convert.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "cuda/sgd.h"

namespace pyopt::cuda::sgd {
namespace {

using pyopt::cuda::narrow;
using pyopt::cuda::widen;

template <typename T, typename B, bool kMaster>
struct SgdFunctor {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const double* hyper;  // kHyperScale.. kHyperNegLr, on the device
  const float* found_inf;
  bool has_wd, nesterov;

  __device__ void operator()(const SgdTensor& t, int64_t begin, int64_t end) const {
    if (found_inf != nullptr && *found_inf != 0.f) return;
    const C scale = static_cast<C>(hyper[kHyperScale]), wd = static_cast<C>(hyper[kHyperWeightDecay]);
    const C mom = static_cast<C>(hyper[kHyperMomentum]), omd = static_cast<C>(hyper[kHyperOneMinusDampening]);
    const C neg_lr = static_cast<C>(hyper[kHyperNegLr]);
    T* p = static_cast<T*>(t.param);
    const T* g = static_cast<const T*>(t.grad);
    B* buf = static_cast<B*>(t.buf);
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      C w = kMaster ? static_cast<C>(t.master[i]) : static_cast<C>(widen(p[i]));
      C gi = mul_rn(static_cast<C>(widen(g[i])), scale);
      if (has_wd) gi = fma(w, wd, gi);
      const bool keep = t.mask == nullptr || t.mask[i];
      if (buf != nullptr) {
        C b = t.first ? gi : fma(gi, omd, mul_rn(static_cast<C>(widen(buf[i])), mom));
        gi = nesterov ? fma(b, mom, gi) : b;
        if (!keep) b = C(0);
        if constexpr (std::is_same_v<C, double>)
          buf[i] = b;
        else
          buf[i] = narrow<B>(b);
      }
      w = fma(gi, neg_lr, w);
      if (!keep) w = C(0);
      if constexpr (kMaster) t.master[i] = static_cast<float>(w);
      if constexpr (std::is_same_v<C, double>)
        p[i] = w;
      else
        p[i] = narrow<T>(w);
    }
  }

  // The separately rounded product `buf * momentum` (buf.mul_(momentum)): never contracted into the fma.
  __device__ static __forceinline__ C mul_rn(C a, C b) {
    if constexpr (std::is_same_v<C, double>)
      return __dmul_rn(a, b);
    else
      return __fmul_rn(a, b);
  }
};

template <typename T, typename B, bool kMaster>
cudaError_t run(const SgdTensor* tensors, const int64_t* numels, int64_t n, const SgdLaunch& l) {
  SgdFunctor<T, B, kMaster> f{l.hyper, l.found_inf, l.has_weight_decay, l.nesterov};
  return multi_tensor_apply(tensors, numels, n, f, l.stream);
}

}  // namespace

cudaError_t launch_fused_sgd(const SgdTensor* tensors, const int64_t* numels, int64_t n, const SgdLaunch& l) {
  switch (l.dtype) {
    case SgdDtype::Float32:
      return run<float, float, false>(tensors, numels, n, l);
    case SgdDtype::Float64:
      return run<double, double, false>(tensors, numels, n, l);
    case SgdDtype::BFloat16:
      return l.master ? run<__nv_bfloat16, float, true>(tensors, numels, n, l)
                      : run<__nv_bfloat16, __nv_bfloat16, false>(tensors, numels, n, l);
    case SgdDtype::Float16:
      return l.master ? run<__half, float, true>(tensors, numels, n, l)
                      : run<__half, __half, false>(tensors, numels, n, l);
  }
  return cudaErrorInvalidValue;
}

}  // namespace pyopt::cuda::sgd
