"""Drop-in modules. Each is thin: its forward calls torch.ops.pyopt.*; pyopt/nn/registry.py is the protocol
they follow (save/load), and pyopt/_rules.py the parameter-mask protocol (pruning, FusedSGD)."""

from .._rules import get_param_mask, set_param_mask
from .binary_linear import BinaryLinear
from .identity_block import IdentityBlock
from .int8_conv import Int8Conv2d
from .int8_embedding import Int8Embedding, Int8EmbeddingBag
from .int8_linear import Int8Linear
from .sparse_conv import SparseConv1d, SparseConv2d, SparseConv3d
from .sparse_embedding import SparseEmbedding
from .sparse_linear import SparseLinear

__all__ = [
    "BinaryLinear",
    "IdentityBlock",
    "Int8Conv2d",
    "Int8Embedding",
    "Int8EmbeddingBag",
    "Int8Linear",
    "SparseConv1d",
    "SparseConv2d",
    "SparseConv3d",
    "SparseEmbedding",
    "SparseLinear",
    "get_param_mask",
    "set_param_mask",
]
