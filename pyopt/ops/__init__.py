"""Implementations of the pyopt:: ops, one module per family; importing one registers its backends."""

from . import quant  # noqa: F401
from .binary_linear import binary_linear_ref  # noqa: F401  (importing registers the binary_linear backends)
