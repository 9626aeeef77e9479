from .binary_linear import BinaryLinear  # noqa: F401
