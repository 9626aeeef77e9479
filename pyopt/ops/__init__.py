"""Implementations of the pyopt:: ops, one module per family; importing one registers its backends."""

from . import binary_linear, int8_linear, quant, sgd, sparse  # noqa: F401
