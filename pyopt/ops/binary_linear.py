"""binary_linear: reference, cpu, triton and cuda implementations.

Packed layout: pyopt/_rules.py (pack_signs). On a little-endian machine bytes j, j+1 read as one uint16 give
bits k = 8j .. 8j+15 in lane order, which is what the AVX-512 kernel loads as a __mmask16.

Math (XNOR-Net, Rastegari et al. 2016): W ~ alpha * sign(W) with alpha[n] = mean_k |W[n, k]| (BWN).
With binary activations, x ~ beta * sign(x) with beta[m] = mean_k |x[m, k]|, and
sign(x) . sign(w) = K - 2 * popcount(xbits XOR wbits).
"""

from __future__ import annotations

import math

import torch

from .._rules import unpack_signs
from .backends import register, requested_isa


def _rows(x: torch.Tensor, in_features: int) -> torch.Tensor:
    return x.reshape(math.prod(x.shape[:-1]), in_features)


@register("binary_linear", "reference")
def binary_linear_ref(x, packed_weight, alpha, bias, in_features, binary_activations=False):
    xf = _rows(x, in_features).float()
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


def _native_args(x, packed_weight, alpha, bias, in_features):
    x2 = _rows(x, in_features).to(torch.float32).contiguous()
    b = None if bias is None else bias.contiguous()
    return x2, packed_weight.contiguous(), alpha.contiguous(), b


@register("binary_linear", "cpu")
def binary_linear_cpu(x, packed_weight, alpha, bias, in_features, binary_activations=False):
    x2, w, a, b = _native_args(x, packed_weight, alpha, bias, in_features)
    y = torch.ops.pyopt_cpu.binary_linear(x2, w, a, b, in_features, binary_activations, requested_isa())
    return y.to(x.dtype).reshape(*x.shape[:-1], packed_weight.shape[0])


@register("binary_linear", "cuda")
def binary_linear_cuda(x, packed_weight, alpha, bias, in_features, binary_activations=False):
    x2, w, a, b = _native_args(x, packed_weight, alpha, bias, in_features)
    y = torch.ops.pyopt_cuda.binary_linear(x2, w, a, b, in_features, binary_activations)
    return y.to(x.dtype).reshape(*x.shape[:-1], packed_weight.shape[0])


@register("binary_linear", "triton")
def binary_linear_triton(x, packed_weight, alpha, bias, in_features, binary_activations=False):
    from ..kernels import binary_linear as kernel  # imported lazily: Triton is optional

    x2 = _rows(x, in_features).contiguous()
    y = kernel.binary_linear(x2, packed_weight.contiguous(), alpha, bias, in_features, binary_activations)
    return y.reshape(*x.shape[:-1], packed_weight.shape[0])
