from .sparse_linear import SparseLinear  # noqa: E402,F401
