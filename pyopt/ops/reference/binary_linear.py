"""binary_linear, pure torch: the kernel on every device without a native one, and the tests' oracle.

Math (XNOR-Net, Rastegari et al. 2016): W ~ alpha * sign(W) with alpha[n] = mean_k |W[n, k]| (BWN); packed
layout: pyopt/_rules.py pack_signs. With binary activations, x ~ beta * sign(x) with beta[m] = mean_k |x[m, k]|,
and sign(x) . sign(w) = K - 2 * popcount(xbits XOR wbits).
"""

from __future__ import annotations

import math

import torch

from ..._rules import unpack_signs
from .. import checks as C
from ..backends import reference


@reference("binary_linear")
def binary_linear_ref(x, packed_weight, alpha, bias, in_features, binary_activations=False):
    C.check_binary_linear(x, packed_weight, alpha, bias, in_features, binary_activations)
    xf = x.reshape(math.prod(x.shape[:-1]), in_features).float()
    signs = unpack_signs(packed_weight, in_features)
    if binary_activations:
        beta = xf.abs().sum(1, keepdim=True) / max(in_features, 1)
        xs = torch.where(xf >= 0, 1.0, -1.0)
        y = (xs @ signs.t()) * alpha * beta  # the dot of signs is an exact integer in float32 (K < 2^24)
    else:
        y = (xf @ signs.t()) * alpha
    if bias is not None:
        y = y + bias
    return y.to(x.dtype).reshape(*x.shape[:-1], packed_weight.shape[0])
