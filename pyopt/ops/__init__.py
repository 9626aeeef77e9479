"""The op library: every `torch.ops.pyopt.*` op — schema and fake (schemas.py), argument checks (checks.py),
and its kernels on the dispatcher's keys (backends.py says which): C++ for CPU (pyopt._C), CUDA C++ or
Triton for CUDA (pyopt._C_cuda, triton/), the pure-torch reference for every other device (reference/)."""

# isort: off
from . import schemas  # noqa: F401  (first: the kernels below register against these schemas)
from . import autograd, reference, triton  # noqa: F401
from . import backends, native

native.cpu_ext()  # the C++ CPU kernels register themselves for the CPU key on import (never fails)
backends.register_cuda()  # the CUDA key's kernels (C++ or Triton), where torch has CUDA
# isort: on
