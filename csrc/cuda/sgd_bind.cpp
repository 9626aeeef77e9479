// torch binding of the CUDA fused SGD (csrc/cuda/sgd.cu): checks, grouping by dtype, then one
// multi-tensor launch per group on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "cuda/sgd.h"

namespace {

using pyopt_cuda::SgdDtype;

SgdDtype sgd_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return SgdDtype::Float32;
    case at::kDouble:
      return SgdDtype::Float64;
    case at::kBFloat16:
      return SgdDtype::BFloat16;
    case at::kHalf:
      return SgdDtype::Float16;
    default:
      TORCH_CHECK(false, "fused_sgd_: params must be float32, float64, bfloat16 or float16, got ", t);
  }
  return SgdDtype::Float32;  // unreachable
}

// hyper: float64 [scale, weight_decay, momentum, 1 - dampening, -lr] on the params' device (built by
// pyopt/ops/sgd.py). All tensors must be contiguous (the Python side makes them so).
void fused_sgd(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
               const std::vector<at::Tensor>& momentum_buffers, const std::vector<at::Tensor>& master_params,
               const c10::List<std::optional<at::Tensor>>& masks, const std::vector<int64_t>& first_step,
               const at::Tensor& hyper, const std::optional<at::Tensor>& found_inf, bool has_weight_decay,
               bool nesterov) {
  const size_t n = params.size();
  if (n == 0) return;
  const bool has_mom = !momentum_buffers.empty(), has_master = !master_params.empty();
  TORCH_CHECK(grads.size() == n && (!has_mom || (momentum_buffers.size() == n && first_step.size() == n)) &&
                  (!has_master || master_params.size() == n) && (masks.empty() || masks.size() == n),
              "fused_sgd_: every list must have one entry per param");
  const at::Device device = params[0].device();
  TORCH_CHECK(device.is_cuda(), "fused_sgd_: params must be CUDA tensors");
  TORCH_CHECK(hyper.device() == device && hyper.scalar_type() == at::kDouble && hyper.numel() == 5 &&
                  hyper.is_contiguous(),
              "fused_sgd_: hyper must be 5 contiguous float64 values on the params' device");
  TORCH_CHECK(!found_inf.has_value() || (found_inf->device() == device && found_inf->scalar_type() == at::kFloat &&
                                         found_inf->numel() == 1),
              "fused_sgd_: found_inf must be a float32 scalar on the params' device");
  c10::cuda::CUDAGuard guard(device);

  auto check = [&](const at::Tensor& t, const char* what, size_t i, at::ScalarType dtype) {
    TORCH_CHECK(t.device() == device && t.is_contiguous() && t.scalar_type() == dtype &&
                    t.sizes() == params[i].sizes(),
                "fused_sgd_: ", what, "[", i, "] must be a contiguous ", dtype, " tensor shaped like params[", i,
                "] on ", device);
  };
  // Group by param dtype: one launcher call per dtype.
  std::vector<std::vector<pyopt_cuda::SgdTensor>> infos(4);
  std::vector<std::vector<int64_t>> numels(4);
  for (size_t i = 0; i < n; ++i) {
    const at::ScalarType dt = params[i].scalar_type();
    const SgdDtype code = sgd_dtype(dt);
    TORCH_CHECK(!grads[i].is_sparse(), "fused_sgd_: grads[", i, "]: FusedSGD does not support sparse gradients");
    check(params[i], "params", i, dt);
    check(grads[i], "grads", i, dt);
    pyopt_cuda::SgdTensor t{params[i].data_ptr(), grads[i].data_ptr(), nullptr, nullptr, nullptr, false};
    if (has_master) {
      TORCH_CHECK(dt == at::kBFloat16 || dt == at::kHalf, "fused_sgd_: master_params need bf16/fp16 params");
      check(master_params[i], "master_params", i, at::kFloat);
      t.master = master_params[i].data_ptr<float>();
    }
    if (has_mom) {
      check(momentum_buffers[i], "momentum_buffers", i, has_master ? at::kFloat : dt);
      t.buf = momentum_buffers[i].data_ptr();
      t.first = first_step[i] != 0;
    }
    if (!masks.empty()) {
      std::optional<at::Tensor> m = masks.get(i);
      if (m.has_value() && m->defined()) {
        check(*m, "masks", i, at::kBool);
        t.mask = m->data_ptr<bool>();
      }
    }
    infos[static_cast<int>(code)].push_back(t);
    numels[static_cast<int>(code)].push_back(params[i].numel());
  }
  for (int code = 0; code < 4; ++code) {
    if (infos[code].empty()) continue;
    pyopt_cuda::SgdLaunch l{static_cast<SgdDtype>(code),
                            has_master,
                            has_weight_decay,
                            nesterov,
                            hyper.data_ptr<double>(),
                            found_inf.has_value() ? found_inf->data_ptr<float>() : nullptr,
                            c10::cuda::getCurrentCUDAStream(device.index()).stream()};
    cudaError_t err = pyopt_cuda::launch_fused_sgd(infos[code].data(), numels[code].data(),
                                                    static_cast<int64_t>(infos[code].size()), l);
    TORCH_CHECK(err == cudaSuccess, "fused_sgd_: CUDA launch failed: ", cudaGetErrorString(err));
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyopt_cuda, m) { m.def("fused_sgd", &fused_sgd); }
