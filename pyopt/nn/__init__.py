"""Drop-in modules. Each is thin: its forward calls torch.ops.pyopt.*; see pyopt/nn/_base.py for the protocol."""

from .binary_linear import BinaryLinear
from .int8_linear import Int8Conv2d, Int8Linear
from .sparse_conv import SparseConv2d
from .sparse_linear import SparseLinear

__all__ = ["BinaryLinear", "Int8Conv2d", "Int8Linear", "SparseConv2d", "SparseLinear"]
