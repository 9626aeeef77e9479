from .binary_linear import BinaryLinear  # noqa: F401
from .sparse_conv import SparseConv2d  # noqa: E402,F401
from .sparse_linear import SparseLinear  # noqa: E402,F401
