"""binary_linear on Triton (kernels/binary_linear.py): the CUDA kernel where Triton measured faster, and CPU
tensors under TRITON_INTERPRET=1 when forced (tests)."""

from __future__ import annotations

import math

from .. import checks as C
from ..backends import triton


@triton("binary_linear")
def binary_linear_triton(x, packed_weight, alpha, bias, in_features, binary_activations=False):
    C.check_binary_linear(x, packed_weight, alpha, bias, in_features, binary_activations)
    from ...kernels import binary_linear as kernel

    x2 = x.reshape(math.prod(x.shape[:-1]), in_features).contiguous()
    y = kernel.binary_linear(x2, packed_weight.contiguous(), alpha, bias, in_features, binary_activations)
    return y.reshape(*x.shape[:-1], packed_weight.shape[0])
