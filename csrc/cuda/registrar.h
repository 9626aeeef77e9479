// How the CUDA kernels reach the dispatcher (csrc/cuda/module.cpp): each family's binding file defines
// `void add_<family>(Registrar&)` listing its kernels once. PYBIND11_MODULE exposes them all as Python functions
// (for pyopt.use_backend("cuda") where Triton holds the CUDA key), and register_kernels(names) registers the
// named ones for the CUDA key of their pyopt:: op — called once by pyopt/ops/backends.py at import, which
// decides there which ops Triton serves instead.
#pragma once
#include <torch/extension.h>
#include <torch/library.h>

#include <set>
#include <string>

namespace pyopt::cuda {

struct Registrar {
  torch::Library* lib = nullptr;              // register for the CUDA key (register_kernels), or
  const std::set<std::string>* names = nullptr;
  pybind11::module_* module = nullptr;        // expose as module functions (import)

  template <class Fn>
  void op(const char* name, Fn* fn) {
    if (lib != nullptr && names->count(name)) lib->impl(name, fn);
    if (module != nullptr) {
      std::string py = name;
      for (char& c : py) c = c == '.' ? '_' : c;  // "dequantize_per_tensor.out" -> dequantize_per_tensor_out
      module->def(py.c_str(), fn);
    }
  }
};

void add_quant(Registrar& r);
void add_int8_linear(Registrar& r);
void add_binary_linear(Registrar& r);
void add_sparse(Registrar& r);
void add_sgd(Registrar& r);

}  // namespace pyopt::cuda
