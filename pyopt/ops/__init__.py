"""Implementations of the pyopt:: ops, one module per family; importing one registers its backends."""

from . import quant  # noqa: F401
from . import int8_linear  # noqa: F401
