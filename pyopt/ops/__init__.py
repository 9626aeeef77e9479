"""Implementations of the pyopt:: ops, one module per family; importing one registers its backends."""

from . import quant, sparse  # noqa: F401
