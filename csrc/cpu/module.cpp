// The module object of pyopt._C: the few functions Python calls directly (ISA control), and pyopt._C.ops, the
// typed Python bindings of the per-call ops (csrc/op_bindings.cpp).
//
// Every CPU kernel registers itself for the dispatcher's CPU key of its pyopt:: op, from its own file
// (TORCH_LIBRARY_IMPL(pyopt, CPU, m) in csrc/cpu/<stem>.cpp); the schemas and fakes are declared in Python
// (pyopt/ops/schemas.py), so a call to torch.ops.pyopt.<op> on CPU tensors goes straight to the C++ kernel.
// Calls through torch.ops release the GIL, so long kernels never block other Python threads.
#include <omp.h>
#include <torch/extension.h>

#include "cpu/cpu_isa.h"

namespace pyopt::ops {
void add_op_bindings(pybind11::module_& m);  // csrc/op_bindings.cpp
}

namespace {
int64_t set_isa_cap(int64_t cap) {
  TORCH_CHECK_VALUE(cap >= -1 && cap < static_cast<int64_t>(std::size(pyopt::kIsaNames)), "isa cap out of range: ",
                    cap);
  const int64_t previous = pyopt::thread_isa_cap();
  pyopt::thread_isa_cap() = cap;
  return previous;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pyopt CPU kernels (registered for the CPU key of the torch.ops.pyopt.* ops)";
  m.def("detected_isa", [] { return static_cast<int64_t>(pyopt::detected_isa()); },
        "the best ISA tier of this CPU (index into ISA_NAMES)");
  m.def("active_isa", [] { return static_cast<int64_t>(pyopt::active_isa()); },
        "the ISA tier a kernel called on this thread uses now");
  m.def("set_isa_cap", &set_isa_cap, "set this thread's ISA cap (-1 = none); returns the previous cap");
  m.def("omp_threads", [] { return static_cast<int64_t>(omp_get_max_threads()); });
  pyopt::ops::add_op_bindings(m);
}
