"""The Triton kernels of the pyopt:: ops (kernels/ holds the @triton.jit code, imported on first use): the CUDA
key's kernel where Triton measured faster or no C++ kernel exists, and, forced, CPU tensors under
TRITON_INTERPRET=1 (tests)."""

from . import binary_linear, int8_linear, quant, sgd, sparse  # noqa: F401
