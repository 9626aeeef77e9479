"""Block-sparse (BSR) linear on Triton (kernels/sparse.py, tl.dot per block in the input dtype, blocks >= 16):
the CUDA kernel of pyopt::sparse_bsr_linear, and CPU tensors under TRITON_INTERPRET=1 when forced (tests)."""

from __future__ import annotations

import math

from .. import checks as C
from ..backends import triton
from ..reference.sparse import _check_cols, _check_crow


@triton("sparse_bsr_linear")
def bsr_linear_triton(x, crow_indices, col_indices, values, bias, out_features):
    C.check_sparse_bsr_linear(x, crow_indices, col_indices, values, bias, out_features)
    _check_crow(crow_indices, values.shape[0])
    _check_cols(crow_indices, col_indices, x.shape[-1] // values.shape[2], "block row")
    from ...kernels import sparse as tk

    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).contiguous()
    y = tk.bsr_linear(x2, crow_indices, col_indices, values, bias, out_features)
    return y.reshape(*x.shape[:-1], out_features)
