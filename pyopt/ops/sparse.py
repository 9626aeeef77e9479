"""sparse family: reference, cpu, triton and cuda implementations of the pyopt::sparse_* ops, the autograd
of the masked matmul, and the conversions from a masked dense weight to CSR / BSR / csr_int8.

Masked matmul (training): y = x (W*M)^T + b;  grad_x = grad_y (W*M);  grad_W = (grad_y^T x) * M (SDDMM:
only kept entries are computed; pruned entries of grad_W are exactly 0, so W*M stays W*M under SGD).
The C++ kernels compute in float32: float32 runs natively, bf16/fp16 are widened to float32 and rounded
back, float64 (gradcheck) runs the reference.
csr_int8 (weight-only int8 CSR, y = scale_n * sum_k q[n,k] x[m,k] + b[n]): reference (dequantise + the float
CSR reference) and cpu (csrc/cpu/sparse_int8.cpp); there is no GPU kernel, CUDA tensors run the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._rules import dequantize_csr_int8, masked_weight
from .backends import register, requested_isa

# ----------------------------------------------------------------------------------------------------------
# reference: pure torch (fallback on any device and the tests' oracle)
# ----------------------------------------------------------------------------------------------------------


@register("sparse_masked_linear", "reference")
def masked_linear_ref(x, weight, mask, bias):
    return F.linear(x, masked_weight(weight, mask), bias)


@register("sparse_masked_linear_grad_input", "reference")
def masked_linear_grad_input_ref(grad_y, weight, mask):
    return grad_y @ masked_weight(weight, mask)


@register("sparse_masked_sddmm", "reference")
def masked_sddmm_ref(grad_y, x, mask):
    gy = _2d(grad_y)
    return masked_weight(gy.t() @ _2d(x), mask)


def _check_col_range(col_indices: torch.Tensor, k: int) -> None:
    if col_indices.numel() and (int(col_indices.min()) < 0 or int(col_indices.max()) >= k):
        raise ValueError(f"col_indices must be in [0, {k})")


@register("sparse_csr_linear", "reference")
def csr_linear_ref(x, crow_indices, col_indices, values, bias, out_features):
    k = x.shape[-1]
    _check_col_range(col_indices, k)
    w = torch.sparse_csr_tensor(
        crow_indices, col_indices.long(), values, (out_features, k), check_invariants=True
    ).to_dense()
    return F.linear(x, w, bias)


@register("sparse_csr_int8_linear", "reference")
def csr_int8_linear_ref(x, crow_indices, col_indices, values, row_scales, bias, out_features):
    # the oracle: dequantise, then the float CSR reference in float32 (float64 for float64 x)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = dequantize_csr_int8(crow_indices, values, row_scales).to(dt)
    b = None if bias is None else bias.to(dt)
    return csr_linear_ref(x.to(dt), crow_indices, col_indices, w, b, out_features).to(x.dtype)


@register("sparse_bsr_linear", "reference")
def bsr_linear_ref(x, crow_indices, col_indices, values, bias, out_features):
    k = x.shape[-1]
    _check_col_range(col_indices, k // values.shape[2])
    w = torch.sparse_bsr_tensor(
        crow_indices, col_indices.long(), values, (out_features, k), check_invariants=True
    ).to_dense()
    return F.linear(x, w, bias)


# ----------------------------------------------------------------------------------------------------------
# cpu: C++ kernels (csrc/cpu/sparse.cpp) on 2-D contiguous float32
# ----------------------------------------------------------------------------------------------------------
def _2d(t: torch.Tensor) -> torch.Tensor:
    """t as [rows, last dim]; not reshape(-1, K), which is ambiguous for an empty t with K == 0."""
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def _flat(t: torch.Tensor) -> torch.Tensor:
    return _2d(t).float().contiguous()


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float().contiguous()


@register("sparse_masked_linear", "cpu")
def masked_linear_cpu(x, weight, mask, bias):
    if x.dtype == torch.float64:
        return masked_linear_ref(x, weight, mask, bias)
    y = torch.ops.pyopt_cpu.sparse_masked_linear(
        _flat(x), _f32(weight), mask.contiguous(), _f32(bias), requested_isa()
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


@register("sparse_masked_linear_grad_input", "cpu")
def masked_linear_grad_input_cpu(grad_y, weight, mask):
    if grad_y.dtype == torch.float64:
        return masked_linear_grad_input_ref(grad_y, weight, mask)
    gx = torch.ops.pyopt_cpu.sparse_masked_linear_grad_input(
        _flat(grad_y), _f32(weight), mask.contiguous(), requested_isa()
    )
    return gx.to(grad_y.dtype).reshape(*grad_y.shape[:-1], weight.shape[1])


@register("sparse_masked_sddmm", "cpu")
def masked_sddmm_cpu(grad_y, x, mask):
    if x.dtype == torch.float64:
        return masked_sddmm_ref(grad_y, x, mask)
    gw = torch.ops.pyopt_cpu.sparse_masked_sddmm(_flat(grad_y), _flat(x), mask.contiguous(), requested_isa())
    return gw.to(x.dtype)


def _compressed_cpu(op, ref, x, crow_indices, col_indices, weights, bias, out_features):
    """One C++ call for the compressed formats: `weights` are the op's value tensors (float values; or int8
    values and float32 row scales). float32 compute, the result rounded to x's dtype; float64 x -> ref."""
    if x.dtype == torch.float64:
        return ref(x, crow_indices, col_indices, *weights, bias, out_features)
    y = op(
        _flat(x),
        crow_indices.contiguous(),
        col_indices.contiguous(),
        *(_f32(w) if w.is_floating_point() else w.contiguous() for w in weights),
        _f32(bias),
        out_features,
        requested_isa(),
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


@register("sparse_csr_linear", "cpu")
def csr_linear_cpu(x, crow_indices, col_indices, values, bias, out_features):
    op = torch.ops.pyopt_cpu.sparse_csr_linear
    return _compressed_cpu(op, csr_linear_ref, x, crow_indices, col_indices, (values,), bias, out_features)


@register("sparse_csr_int8_linear", "cpu")
def csr_int8_linear_cpu(x, crow_indices, col_indices, values, row_scales, bias, out_features):
    op = torch.ops.pyopt_cpu.sparse_csr_int8_linear  # csrc/cpu/sparse_int8.cpp
    weights = (values, row_scales)
    return _compressed_cpu(op, csr_int8_linear_ref, x, crow_indices, col_indices, weights, bias, out_features)


@register("sparse_bsr_linear", "cpu")
def bsr_linear_cpu(x, crow_indices, col_indices, values, bias, out_features):
    op = torch.ops.pyopt_cpu.sparse_bsr_linear
    return _compressed_cpu(op, bsr_linear_ref, x, crow_indices, col_indices, (values,), bias, out_features)


# ----------------------------------------------------------------------------------------------------------
# triton: block-sparse (BSR) kernel, kernels/sparse.py
# ----------------------------------------------------------------------------------------------------------
@register("sparse_bsr_linear", "triton")
def bsr_linear_triton(x, crow_indices, col_indices, values, bias, out_features):
    from ..kernels import sparse as tk

    y = tk.bsr_linear(_2d(x).contiguous(), crow_indices, col_indices, values, bias, out_features)
    return y.reshape(*x.shape[:-1], out_features)


# ----------------------------------------------------------------------------------------------------------
# cuda: CSR SpMM (csrc/cuda/sparse.cu), float32
# ----------------------------------------------------------------------------------------------------------
@register("sparse_csr_linear", "cuda")
def csr_linear_cuda(x, crow_indices, col_indices, values, bias, out_features):
    if x.dtype != torch.float32:
        return csr_linear_ref(x, crow_indices, col_indices, values, bias, out_features)
    y = torch.ops.pyopt_cuda.sparse_csr_linear(
        _2d(x).contiguous(),
        crow_indices.contiguous(),
        col_indices.int().contiguous(),
        values.contiguous(),
        bias,
        out_features,
    )
    return y.reshape(*x.shape[:-1], out_features)


# ----------------------------------------------------------------------------------------------------------
# autograd of the masked matmul
# ----------------------------------------------------------------------------------------------------------
def _setup_masked_linear(ctx, inputs, output):
    x, weight, mask, bias = inputs
    ctx.save_for_backward(x, weight, mask)
    ctx.has_bias = bias is not None


def _backward_masked_linear(ctx, grad_y):
    x, weight, mask = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.pyopt.sparse_masked_linear_grad_input(grad_y, weight, mask)
    if ctx.needs_input_grad[1]:
        grad_w = torch.ops.pyopt.sparse_masked_sddmm(grad_y, x, mask)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_b = _2d(grad_y).sum(0)
    return grad_x, grad_w, None, grad_b


torch.library.register_autograd(
    "pyopt::sparse_masked_linear", _backward_masked_linear, setup_context=_setup_masked_linear
)
