from .sparse_conv import SparseConv2d  # noqa: E402,F401
from .binary_linear import BinaryLinear  # noqa: F401
