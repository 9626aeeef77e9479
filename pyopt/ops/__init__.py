"""The op library: every `torch.ops.pyopt.*` op — its schema and fake (schemas.py), argument checks
(checks.py), backend selection (backends.py) and the implementations, one module per family."""

from . import native

native.cpu_ext()  # loads the C++ kernels if built (never fails)

# the schemas first: the implementations register kernels and autograd formulas against them
from . import schemas  # noqa: E402,F401

# isort: split
from . import binary_linear, embedding, int8_linear, quant, sgd, sparse  # noqa: E402,F401
