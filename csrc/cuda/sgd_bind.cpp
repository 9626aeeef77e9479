// The CUDA kernel of pyopt::fused_sgd_ (csrc/cuda/sgd.cu: apex-style multi_tensor_apply): checks
// (csrc/op_checks.h), the hyperparameters built on the device (a tensor lr and GradScaler's scale / found_inf
// are read there: no host synchronisation), contiguous copies of non-contiguous tensors written back, and one
// multi-tensor launch per param dtype on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <utility>
#include <vector>

#include "cuda/registrar.h"
#include "cuda/sgd.h"
#include "op_checks.h"

namespace pyopt::cuda {
namespace {

using pyopt::cuda::sgd::SgdDtype;

SgdDtype sgd_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return SgdDtype::Float64;
    case at::kBFloat16: return SgdDtype::BFloat16;
    case at::kHalf: return SgdDtype::Float16;
    default: return SgdDtype::Float32;  // (the checks allow only these four)
  }
}

// float64 [scale, weight_decay, momentum, 1 - dampening, -lr] on `device` (SgdHyper layout), built without a
// host synchronisation: scale = +-float32(1 / grad_scale) (GradScaler's unscale factor), lr from lr_tensor.
at::Tensor device_hyper(const at::Device& device, double lr, double weight_decay, double momentum, double dampening,
                        bool maximize, const std::optional<at::Tensor>& lr_tensor,
                        const std::optional<at::Tensor>& grad_scale) {
  at::Tensor hyper = at::tensor({1.0, weight_decay, momentum, 1.0 - dampening, -lr}, at::kDouble).to(device);
  if (grad_scale) hyper.narrow(0, 0, 1).copy_(grad_scale->to(at::kDouble).reciprocal().to(at::kFloat).reshape({1}));
  if (maximize) hyper.narrow(0, 0, 1).neg_();
  if (lr_tensor) hyper.narrow(0, 4, 1).copy_(lr_tensor->reshape({1}).neg());
  return hyper;
}

void fused_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                at::TensorList master_params, const c10::List<std::optional<at::Tensor>>& masks,
                const c10::List<bool>& first_step, double lr, double weight_decay, double momentum, double dampening,
                bool nesterov, bool maximize, const std::optional<at::Tensor>& lr_tensor,
                const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  checks::sgd_lists(n, grads.size(), momentum_buffers.size(), master_params.size(), masks.size(), first_step.size(),
                    lr, lr_tensor);
  if (n == 0) return;
  const bool has_mom = !momentum_buffers.empty(), has_master = !master_params.empty();
  std::vector<std::optional<at::Tensor>> mask_of(n);
  for (size_t i = 0; i < n; ++i) {
    if (!masks.empty()) mask_of[i] = masks.get(i);
    const at::Tensor* m = mask_of[i] && mask_of[i]->defined() ? &*mask_of[i] : nullptr;
    checks::sgd_tensor(i, params, grads[i], has_mom ? &momentum_buffers[i] : nullptr,
                       has_master ? &master_params[i] : nullptr, m);
  }
  const at::Device device = params[0].device();
  c10::cuda::CUDAGuard guard(device);
  const at::Tensor hyper = device_hyper(device, lr, weight_decay, momentum, dampening, maximize, lr_tensor, grad_scale);
  const at::Tensor found = found_inf ? found_inf->reshape({1}).to(device, at::kFloat) : at::Tensor();

  std::vector<at::Tensor> keep;  // contiguous inputs, alive until the launches are queued
  std::vector<std::pair<at::Tensor, at::Tensor>> writeback;
  auto writable = [&](const at::Tensor& t) -> at::Tensor {
    if (t.is_contiguous()) return t;
    at::Tensor c = t.contiguous();
    writeback.emplace_back(t, c);
    return c;
  };
  auto readable = [&](const at::Tensor& t) -> const at::Tensor& {
    keep.push_back(t.contiguous());
    return keep.back();
  };
  // Group by param dtype: one launcher call per dtype.
  std::vector<std::vector<pyopt::cuda::sgd::SgdTensor>> infos(4);
  std::vector<std::vector<int64_t>> numels(4);
  keep.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    const int code = static_cast<int>(sgd_dtype(params[i].scalar_type()));
    pyopt::cuda::sgd::SgdTensor t{writable(params[i]).data_ptr(), readable(grads[i]).data_ptr(), nullptr, nullptr, nullptr,
                            false};
    if (has_master) t.master = writable(master_params[i]).data_ptr<float>();
    if (has_mom) {
      t.buf = writable(momentum_buffers[i]).data_ptr();
      t.first = first_step.get(i);
    }
    if (mask_of[i] && mask_of[i]->defined()) t.mask = readable(*mask_of[i]).data_ptr<bool>();
    infos[code].push_back(t);
    numels[code].push_back(params[i].numel());
  }
  for (int code = 0; code < 4; ++code) {
    if (infos[code].empty()) continue;
    pyopt::cuda::sgd::SgdLaunch l{static_cast<SgdDtype>(code), has_master, weight_decay != 0.0, nesterov,
                            hyper.data_ptr<double>(), found.defined() ? found.data_ptr<float>() : nullptr,
                            c10::cuda::getCurrentCUDAStream(device.index()).stream()};
    cudaError_t err = pyopt::cuda::sgd::launch_fused_sgd(infos[code].data(), numels[code].data(),
                                                    static_cast<int64_t>(infos[code].size()), l);
    TORCH_CHECK(err == cudaSuccess, "fused_sgd_: CUDA launch failed: ", cudaGetErrorString(err));
  }
  for (auto& [dst, src] : writeback) dst.copy_(src);
}

}  // namespace

void add_sgd(Registrar& r) { r.op("fused_sgd_", &fused_sgd_); }

}  // namespace pyopt::cuda
