// The module object of pyopt._C_cuda. Each family's binding file (csrc/cuda/<stem>_bind.cpp, the only CUDA
// files that include torch) checks the arguments of its pyopt:: ops (csrc/op_checks.h), allocates, and calls
// the launchers that csrc/cuda/<stem>.cu exports (raw pointers, sizes, a cudaStream_t). registrar.h says how
// the kernels reach the dispatcher: register_kernels(names), once, from pyopt/ops/backends.py.
#include <memory>
#include <mutex>

#include "cuda/registrar.h"

namespace {

void add_all(pyopt::cuda::Registrar& r) {
  pyopt::cuda::add_quant(r);
  pyopt::cuda::add_int8_linear(r);
  pyopt::cuda::add_binary_linear(r);
  pyopt::cuda::add_sparse(r);
  pyopt::cuda::add_sgd(r);
}

// Registers the named kernels for the CUDA key of their pyopt:: ops. The Library object must outlive the
// process's use of the ops: it lives in a function-local static, created on the first (and only) call.
void register_kernels(const std::vector<std::string>& names) {
  static std::once_flag once;
  static std::unique_ptr<torch::Library> lib;
  bool first = false;
  std::call_once(once, [&] {
    first = true;
    lib = std::make_unique<torch::Library>(torch::Library::IMPL, "pyopt", c10::DispatchKey::CUDA, __FILE__, __LINE__);
    const std::set<std::string> wanted(names.begin(), names.end());
    pyopt::cuda::Registrar r;
    r.lib = lib.get();
    r.names = &wanted;
    add_all(r);
  });
  TORCH_CHECK(first, "pyopt._C_cuda.register_kernels may be called once per process");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pyopt CUDA kernels (registered for the CUDA key of the torch.ops.pyopt.* ops)";
  pyopt::cuda::Registrar r;
  r.module = &m;
  add_all(r);
  m.def("register_kernels", &register_kernels, "register the named kernels for the CUDA key (once)");
}
