"""Model conversion: pyopt.quantize, pyopt.sparsify and their shared layer selection and reports
(pruning, pyopt.prune, is its own package: pyopt/pruning/)."""

from .quantize import quantize
from .sparsify import sparsify

__all__ = ["quantize", "sparsify"]
