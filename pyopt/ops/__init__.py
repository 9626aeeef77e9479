"""Implementations of the pyopt:: ops, one module per family; importing one registers its backends."""

from . import (
    int8_linear,  # noqa: F401
    quant,  # noqa: F401
)
