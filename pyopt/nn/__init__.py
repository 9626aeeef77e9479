from .binary_linear import BinaryLinear  # noqa: F401
from .sparse_conv import SparseConv2d  # noqa: E402,F401
