"""pyopt: native kernels that make PyTorch models smaller and faster."""

from . import _native

_native.cpu_ext()  # registers torch.ops.pyopt_cpu.* if the C++ extension is built (never fails)

from . import _ops, nn, ops  # noqa: E402,F401  (schemas first, then the implementations)
from ._backend import available_backends, implementations, use_backend, use_isa  # noqa: E402

__version__ = "0.1.0"
__all__ = ["available_backends", "implementations", "use_backend", "use_isa", "__version__"]
