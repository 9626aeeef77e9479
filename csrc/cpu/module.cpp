// The module object of pyopt._C: the few functions Python calls directly (ISA control), and pyopt._C.ops, the
// typed Python bindings of the per-call ops (csrc/op_bindings.cpp).
//
// Every CPU kernel registers itself for the dispatcher's CPU key of its pyopt:: op, from its own file
// (TORCH_LIBRARY_IMPL(pyopt, CPU, m) in csrc/cpu/<stem>.cpp); the schemas and fakes are declared in Python
// (pyopt/ops/schemas.py), so a call to torch.ops.pyopt.<op> on CPU tensors goes straight to the C++ kernel.
// Calls through torch.ops release the GIL, so long kernels never block other Python threads.
#include <omp.h>
#include <torch/extension.h>

#include <map>
#include <string>

#include "cpu/cpu_isa.h"
#include "cpu/int8_gemm.h"
#include "cpu/int8_gemm_amx.h"

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
  // the int8 GEMM's tunables (pyopt/tuning.py applies the `pyopt tune` cache once at import)
  m.def("int8_tuning", [] {
    const auto t = pyopt::int8::tuning();
    return std::map<std::string, int64_t>{{"block_kib", t.block_kib}, {"dot_max_m", t.dot_max_m},
                                          {"chunk_panels", t.chunk_panels}, {"prefetch", t.prefetch}};
  });
  m.def(
      "set_int8_tuning",
      [](int64_t block_kib, int64_t dot_max_m, int64_t chunk_panels, int64_t prefetch) {
        pyopt::int8::set_tuning({block_kib, dot_max_m, chunk_panels, prefetch});
      },
      py::arg("block_kib"), py::arg("dot_max_m"), py::arg("chunk_panels"), py::arg("prefetch"));
  m.def("amx_status", [] {
        const pyopt::AmxStatus s = pyopt::amx_status();
        return std::map<std::string, bool>{{"amx_tile", s.tile}, {"amx_int8", s.int8}, {"amx_bf16", s.bf16},
                                           {"os_enabled", s.os_enabled}, {"permitted", s.permitted}};
      },
        "what the CPU (CPUID), the OS (XCR0) and Linux's permission request offer of AMX");
  // Test entry points of the AMX tier (int8_gemm_amx.h): the kernel on the tile emulator runs on any CPU.
  m.def("amx_emulated_gemm", &pyopt::int8::amx::linear_dynamic, py::arg("x"), py::arg("w_q"), py::arg("w_scales"),
        py::arg("bias") = py::none(), py::arg("emulated") = true,
        "int8_linear_dynamic through the AMX kernel: on the tile emulator, or (emulated=False) the hardware");
  m.def("amx_set_emulation", [](bool on) {
        const bool previous = pyopt::int8::amx::emulate_on_this_thread();
        pyopt::int8::amx::emulate_on_this_thread() = on;
        return previous;
      },
        "test hook: the native int8 GEMMs called from this thread run the AMX kernel on the tile emulator");
  m.def("amx_emulated_tile_dp", &pyopt::int8::amx::emulated_tile_dp, py::arg("op"), py::arg("a"), py::arg("b"),
        py::arg("c"), "one tdpbssd / tdpbusd of the tile emulator: returns c + a . b (a, b in tile layout)");
  m.def("omp_threads", [] { return static_cast<int64_t>(omp_get_max_threads()); });
  pyopt::ops::add_op_bindings(m);
}
