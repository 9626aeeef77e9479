"""Implementations of the pyopt:: ops, one module per family; importing one registers its backends."""

from . import quant  # noqa: F401
from . import sparse  # noqa: F401
