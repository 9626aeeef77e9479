// The module object of pyopt._C_cuda. Each family's binding file (csrc/cuda/<stem>_bind.cpp, the only CUDA
// files that include torch) registers its ops in the `pyopt_cuda` namespace with TORCH_LIBRARY_FRAGMENT and
// calls the launchers that csrc/cuda/<stem>.cu exports (raw pointers, sizes, a cudaStream_t).
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "pyopt CUDA kernels (registered as torch.ops.pyopt_cuda.*)"; }
