from .sparse_conv import SparseConv2d  # noqa: E402,F401
