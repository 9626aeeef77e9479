// The module object of pyopt._C, and pyopt_cpu::detected_isa() / omp_threads() for `pyopt info`.
//
// Every CPU kernel of pyopt registers itself in the `pyopt_cpu` namespace with TORCH_LIBRARY_FRAGMENT
// from its own file (csrc/cpu/<op>.cpp); the schema is inferred from the C++ signature. Importing
// pyopt._C runs those registrations; the public `pyopt::` ops (pyopt/_ops.py) route to them.
// Calls through torch.ops release the GIL, so long kernels never block other Python threads.
#include <omp.h>
#include <torch/extension.h>

#include "cpu/cpu_isa.h"

namespace {
int64_t detected_isa_op() { return static_cast<int64_t>(pyopt::detected_isa()); }
int64_t omp_threads_op() { return omp_get_max_threads(); }
}  // namespace

TORCH_LIBRARY_FRAGMENT(pyopt_cpu, m) {
  m.def("detected_isa", &detected_isa_op);
  m.def("omp_threads", &omp_threads_op);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "pyopt CPU kernels (registered as torch.ops.pyopt_cpu.*)"; }
