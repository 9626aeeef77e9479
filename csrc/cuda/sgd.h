// Interface between csrc/cuda/sgd.cu (CUDA only) and csrc/cuda/sgd_bind.cpp (torch): plain structs.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace pyopt::cuda::sgd {

// Layout of the float64 hyperparameter array on the device.
enum SgdHyper : int { kHyperScale = 0, kHyperWeightDecay, kHyperMomentum, kHyperOneMinusDampening, kHyperNegLr };

enum class SgdDtype : int { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };

struct SgdTensor {
  void* param;
  const void* grad;
  void* buf;         // momentum buffer or nullptr
  float* master;     // float32 master weights or nullptr
  const bool* mask;  // nullptr = dense
  bool first;        // buffer uninitialised: it becomes the (decayed) grad
};

struct SgdLaunch {
  SgdDtype dtype;  // of params/grads (all tensors of one launch share it)
  bool master, has_weight_decay, nesterov;
  const double* hyper;     // device, SgdHyper layout
  const float* found_inf;  // device scalar or nullptr
  cudaStream_t stream;
};

cudaError_t launch_fused_sgd(const SgdTensor* tensors, const int64_t* numels, int64_t n, const SgdLaunch& l);

}  // namespace pyopt::cuda::sgd
