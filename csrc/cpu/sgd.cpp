// Fused multi-tensor SGD step (pyopt::fused_sgd_ on CPU): torch.optim.SGD's update in one pass over memory.
//
// Launcher (apex's multi_tensor_apply idea, on CPU): every tensor of the step is cut into chunks of at most
// kChunk elements, all chunks of all tensors go into one list, and one OpenMP loop runs them. Each chunk
// calls the functor picked for its tensor: `<isa>::sgd_functor<T, B, kMomentum, kMask, kMaster>` instantiated
// for every storage combination listed in PYOPT_SGD_TYPES, in the scalar / avx2 / avx512 namespaces (the
// compiler vectorises the same loop for each target; the ISA is chosen at run time, see cpu_isa.h).
//
// Numerics match torch's for-loop SGD (torch/optim/sgd.py `_single_tensor_sgd`) operation by operation.
// ATen evaluates `a.add(b, alpha=s)` as fma(b, s, a) (ufunc/add.h: vec::fmadd; its scalar tail is
// contracted too), and `buf.mul_(m)` as a separately rounded product, with the scalars cast to the tensor's
// type. So, in the compute type C (float; double for float64):
//   g = grad * (±inv_scale)                  (GradScaler's unscale: exact for its power-of-two scales)
//   g = fma(w, wd, g)                         grad.add(param, alpha=weight_decay)
//   b = first ? g : fma(g, 1 - dampening, b * momentum)
//   g = nesterov ? fma(b, momentum, g) : b    grad.add(buf, alpha=momentum)
//   w = fma(g, -lr, w)                        param.add_(grad, alpha=-lr)
// which reproduces float32 and float64 results bit for bit. bf16/fp16 storage is widened to float32 for the
// whole step and rounded once (torch's CPU fused SGD rounds in between, torch#191763); with master weights
// the float32 master is the `w` above and the bf16/fp16 param receives its rounding.
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <omp.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/cpu_isa.h"
#include "op_checks.h"

namespace pyopt::sgd {
namespace {

constexpr int64_t kChunk = 32768;             // elements per work item: 128 KiB of fp32 per stream
constexpr int64_t kParallelMin = 2 * kChunk;  // below this, one thread is faster than waking the team

struct Hyper {
  // Each scalar in both compute types, cast once like ATen casts a Python scalar to the tensor's type.
  template <typename C>
  struct Of {
    C scale, wd, mom, one_minus_damp, neg_lr;
  };
  Of<float> f;
  Of<double> d;
  bool has_wd, nesterov;

  template <typename C>
  const Of<C>& of() const {
    if constexpr (std::is_same_v<C, double>)
      return d;
    else
      return f;
  }
};

struct TensorTask;
using Functor = void (*)(const TensorTask&, int64_t, int64_t, const Hyper&);

struct TensorTask {
  void* param;
  const void* grad;
  void* buf;       // momentum buffer or nullptr
  float* master;   // float32 master weights or nullptr
  const bool* mask;  // nullptr = dense
  bool first;      // buffer not initialised yet: it becomes the (decayed) grad
  int64_t numel;
  Functor fn;
};

struct Chunk {
  int32_t task;
  int64_t begin, end;
};

// v where the mask byte is 1, +0 where it is 0: an AND of the bits, which the compiler vectorises (a `?:` on a
// bool load kept the loop scalar) and which, unlike v * mask, gives 0 for an inf or NaN v too.
template <typename C>
__attribute__((always_inline)) inline C keep_if(C v, uint8_t m) {
  using U = std::conditional_t<sizeof(C) == 4, uint32_t, uint64_t>;
  U u;
  std::memcpy(&u, &v, sizeof(C));
  u &= U(0) - U(m);
  std::memcpy(&v, &u, sizeof(C));
  return v;
}

// The loop of one chunk; shared by every target so that all ISAs compute identical bits. The pointers are
// restrict-qualified function parameters (GCC honours restrict there, also once inlined, but not on locals
// loaded from a struct), which lets it vectorise without runtime alias checks.
template <typename T, typename B, bool kMomentum, bool kMask, bool kMaster, bool kFirst, bool kWd, bool kNesterov,
          typename C>
__attribute__((always_inline)) inline void sgd_loop(T* __restrict p, const T* __restrict g, B* __restrict buf,
                                                    float* __restrict master, const uint8_t* __restrict mask,
                                                    int64_t n, const Hyper::Of<C> h) {
  for (int64_t i = 0; i < n; ++i) {
    C w = kMaster ? static_cast<C>(master[i]) : static_cast<C>(p[i]);
    C gi = static_cast<C>(g[i]) * h.scale;
    if constexpr (kWd) gi = std::fma(w, h.wd, gi);
    if constexpr (kMomentum) {
      C b;
      if constexpr (kFirst)
        b = gi;
      else
        b = std::fma(gi, h.one_minus_damp, static_cast<C>(buf[i]) * h.mom);
      if constexpr (kNesterov)
        gi = std::fma(b, h.mom, gi);
      else
        gi = b;
      if constexpr (kMask) b = keep_if(b, mask[i]);
      buf[i] = static_cast<B>(b);
    }
    w = std::fma(gi, h.neg_lr, w);
    if constexpr (kMask) w = keep_if(w, mask[i]);
    if constexpr (kMaster) master[i] = static_cast<float>(w);
    p[i] = static_cast<T>(w);
  }
}

// The run-time flags (first step, weight decay, Nesterov) become template arguments here, outside the loop:
// selects or masked loads inside it cost ~25% of a memory-bound step.
template <typename T, typename B, bool kMomentum, bool kMask, bool kMaster>
__attribute__((always_inline)) inline void sgd_functor_body(const TensorTask& t, int64_t begin, int64_t end,
                                                            const Hyper& hyper) {
  using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
  T* p = static_cast<T*>(t.param) + begin;
  const T* g = static_cast<const T*>(t.grad) + begin;
  B* buf = kMomentum ? static_cast<B*>(t.buf) + begin : nullptr;
  float* master = kMaster ? t.master + begin : nullptr;
  const uint8_t* mask = kMask ? reinterpret_cast<const uint8_t*>(t.mask) + begin : nullptr;  // 0/1 bytes
  const int64_t n = end - begin;
  const Hyper::Of<C> h = hyper.of<C>();
  // Plain calls, no lambdas: a lambda would not inherit the caller's target attribute (AVX2/AVX-512).
#define PYOPT_SGD_LOOP(kFirst, kWd, kNesterov) \
  sgd_loop<T, B, kMomentum, kMask, kMaster, kFirst, kWd, kNesterov, C>(p, g, buf, master, mask, n, h)
  const bool wd = hyper.has_wd, nesterov = hyper.nesterov;
  if constexpr (kMomentum) {
    if (t.first) {
      if (nesterov)
        wd ? PYOPT_SGD_LOOP(true, true, true) : PYOPT_SGD_LOOP(true, false, true);
      else
        wd ? PYOPT_SGD_LOOP(true, true, false) : PYOPT_SGD_LOOP(true, false, false);
    } else {
      if (nesterov)
        wd ? PYOPT_SGD_LOOP(false, true, true) : PYOPT_SGD_LOOP(false, false, true);
      else
        wd ? PYOPT_SGD_LOOP(false, true, false) : PYOPT_SGD_LOOP(false, false, false);
    }
  } else {
    wd ? PYOPT_SGD_LOOP(false, true, false) : PYOPT_SGD_LOOP(false, false, false);
  }
#undef PYOPT_SGD_LOOP
}

// The functor per ISA: the same loop, compiled for each target (one namespace per ISA, as in every family).
namespace scalar {
template <typename T, typename B, bool kMomentum, bool kMask, bool kMaster>
void sgd_functor(const TensorTask& t, int64_t begin, int64_t end, const Hyper& h) {
  sgd_functor_body<T, B, kMomentum, kMask, kMaster>(t, begin, end, h);
}
}  // namespace scalar

namespace avx2 {
template <typename T, typename B, bool kMomentum, bool kMask, bool kMaster>
PYOPT_TARGET_AVX2 void sgd_functor(const TensorTask& t, int64_t begin, int64_t end, const Hyper& h) {
  sgd_functor_body<T, B, kMomentum, kMask, kMaster>(t, begin, end, h);
}
}  // namespace avx2

namespace avx512 {
template <typename T, typename B, bool kMomentum, bool kMask, bool kMaster>
PYOPT_TARGET_AVX512 void sgd_functor(const TensorTask& t, int64_t begin, int64_t end, const Hyper& h) {
  sgd_functor_body<T, B, kMomentum, kMask, kMaster>(t, begin, end, h);
}
}  // namespace avx512

template <typename T, typename B, bool kMomentum, bool kMask, bool kMaster>
Functor pick_target(Isa isa) {
  switch (isa) {
    case Isa::Scalar:
      return &scalar::sgd_functor<T, B, kMomentum, kMask, kMaster>;
    case Isa::Avx2:
      return &avx2::sgd_functor<T, B, kMomentum, kMask, kMaster>;
    default:  // every AVX-512 tier
      return &avx512::sgd_functor<T, B, kMomentum, kMask, kMaster>;
  }
}

template <typename T, typename B, bool kMaster>
Functor pick_flags(Isa isa, bool momentum, bool mask) {
  if (momentum)
    return mask ? pick_target<T, B, true, true, kMaster>(isa) : pick_target<T, B, true, false, kMaster>(isa);
  return mask ? pick_target<T, B, false, true, kMaster>(isa) : pick_target<T, B, false, false, kMaster>(isa);
}

// The storage combinations: (param/grad type, buffer type, master weights?, param ScalarType).
#define PYOPT_SGD_TYPES(X)                                  \
  X(float, float, false, at::kFloat)                        \
  X(double, double, false, at::kDouble)                     \
  X(c10::BFloat16, c10::BFloat16, false, at::kBFloat16)     \
  X(c10::Half, c10::Half, false, at::kHalf)                 \
  X(c10::BFloat16, float, true, at::kBFloat16)              \
  X(c10::Half, float, true, at::kHalf)

Functor pick_functor(at::ScalarType dtype, bool master, Isa isa, bool momentum, bool mask) {
#define PYOPT_SGD_CASE(T, B, kMaster, stype) \
  if (dtype == stype && master == kMaster) return pick_flags<T, B, kMaster>(isa, momentum, mask);
  PYOPT_SGD_TYPES(PYOPT_SGD_CASE)
#undef PYOPT_SGD_CASE
  TORCH_CHECK_TYPE(false, "fused_sgd_: params must be float32, float64, bfloat16 or float16, got ", dtype);
}

// A tensor the kernel may write through a raw pointer: itself when contiguous, else a contiguous copy
// that is copied back after the step (`writeback`).
at::Tensor writable(const at::Tensor& t, std::vector<std::pair<at::Tensor, at::Tensor>>& writeback) {
  if (t.is_contiguous()) return t;
  at::Tensor c = t.contiguous();
  writeback.emplace_back(t, c);
  return c;
}

}  // namespace

// The CPU kernel of pyopt::fused_sgd_ (schema and semantics: pyopt/ops/schemas.py). Every argument is checked
// here, with the messages of pyopt/ops/checks.py (op_checks.h's sgd_lists / sgd_tensor). found_inf and
// lr_tensor are CPU scalars here: reading them costs no synchronisation.
void fused_sgd_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                at::TensorList master_params, const c10::List<std::optional<at::Tensor>>& masks,
                const c10::List<bool>& first_step, double lr, double weight_decay, double momentum, double dampening,
                bool nesterov, bool maximize, const std::optional<at::Tensor>& lr_tensor,
                const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  checks::sgd_lists(n, grads.size(), momentum_buffers.size(), master_params.size(), masks.size(), first_step.size(),
                    lr, lr_tensor);
  const bool has_mom = !momentum_buffers.empty(), has_master = !master_params.empty();
  for (size_t i = 0; i < n; ++i) {
    const std::optional<at::Tensor> m = masks.empty() ? std::nullopt : masks.get(i);
    checks::sgd_tensor(i, params, grads[i], has_mom ? &momentum_buffers[i] : nullptr,
                       has_master ? &master_params[i] : nullptr, m && m->defined() ? &*m : nullptr);
  }
  if (found_inf && found_inf->item<double>() != 0) return;  // GradScaler found an overflow: change nothing
  if (lr_tensor) lr = lr_tensor->item<double>();  // torch's SGD reads a tensor lr as a Python float too
  // GradScaler's unscale factor: float32(1 / scale), as torch's _unscale_grads_ computes it
  const double inv_grad_scale =
      grad_scale ? static_cast<double>(static_cast<float>(1.0 / grad_scale->item<double>())) : 1.0;

  Hyper h;
  // ATen casts a Python scalar to the tensor's type; `1 - dampening` and `-lr` are computed in double first.
  const double scale = maximize ? -inv_grad_scale : inv_grad_scale;
  h.d = {scale, weight_decay, momentum, 1.0 - dampening, -lr};
  h.f = {static_cast<float>(scale), static_cast<float>(weight_decay), static_cast<float>(momentum),
         static_cast<float>(1.0 - dampening), static_cast<float>(-lr)};
  h.has_wd = weight_decay != 0.0;
  h.nesterov = nesterov;
  const Isa target = pyopt::active_isa();

  std::vector<TensorTask> tasks;
  std::vector<at::Tensor> keep;  // contiguous copies of inputs, alive until the loop ends
  std::vector<std::pair<at::Tensor, at::Tensor>> writeback;
  tasks.reserve(n);
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TensorTask t{};
    t.numel = p.numel();
    t.param = writable(p, writeback).data_ptr();
    keep.push_back(grads[i].contiguous());
    t.grad = keep.back().data_ptr();
    if (has_mom) {
      t.buf = writable(momentum_buffers[i], writeback).data_ptr();
      t.first = first_step.get(i);
    }
    if (has_master) t.master = writable(master_params[i], writeback).data_ptr<float>();
    bool has_mask = false;
    if (!masks.empty()) {
      std::optional<at::Tensor> m = masks.get(i);
      if (m.has_value() && m->defined()) {
        keep.push_back(m->contiguous());
        t.mask = keep.back().data_ptr<bool>();
        has_mask = true;
      }
    }
    t.fn = pick_functor(p.scalar_type(), has_master, target, has_mom, has_mask);
    total += t.numel;
    tasks.push_back(t);
  }

  std::vector<Chunk> chunks;
  chunks.reserve(n + total / kChunk);
  for (size_t i = 0; i < tasks.size(); ++i)
    for (int64_t b = 0; b < tasks[i].numel; b += kChunk)
      chunks.push_back({static_cast<int32_t>(i), b, std::min(b + kChunk, tasks[i].numel)});

  const int64_t nchunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) if (total >= kParallelMin)
  for (int64_t c = 0; c < nchunks; ++c) {
    const TensorTask& t = tasks[chunks[c].task];
    t.fn(t, chunks[c].begin, chunks[c].end, h);
  }
  for (auto& [dst, src] : writeback) dst.copy_(src);
}

}  // namespace pyopt::sgd

TORCH_LIBRARY_IMPL(pyopt, CPU, m) { m.impl("fused_sgd_", &pyopt::sgd::fused_sgd_); }
