"""Every `pyopt::` op: its schema and its fake (meta) implementation — in one place.

Backends (pyopt/ops/<family>.py) register implementations against these names with
`pyopt._backend.register(op, backend)`; the dispatcher sees one router kernel per op (see _backend.py).
The argument checks the fakes and routers run live in pyopt/_op_checks.py; they validate metadata only
(shapes, dtypes, scalar arguments), so torch.compile reports bad input at trace time, and raise
ValueError/TypeError naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .backends import make_router
from .checks import (
    check_binary_linear,
    check_dequantize_per_channel,
    check_dequantize_per_channel_meta,
    check_dequantize_per_group,
    check_dequantize_per_group_meta,
    check_dequantize_per_tensor,
    check_fused_sgd_lists,
    check_fused_sgd_tensors,
    check_int8_conv2d,
    check_int8_linear,
    check_quantize_per_channel,
    check_quantize_per_channel_meta,
    check_quantize_per_group,
    check_quantize_per_tensor,
    check_quantize_per_token,
    check_sparse_bsr_linear,
    check_sparse_csr_int8_linear,
    check_sparse_csr_linear,
    check_sparse_masked_linear,
    check_sparse_masked_linear_grad_input,
    check_sparse_masked_sddmm,
    conv_out_hw,
)

_lib = torch.library.Library("pyopt", "DEF")  # noqa: TOR901 - owned by this module for the process lifetime


def defop(
    schema: str, fake: Callable, check: Callable | None = None, route_on_first_arg: bool = False
) -> str:
    """Declare `pyopt::<schema>` with its fake impl and the router kernel. Returns the op name.

    route_on_first_arg: the router takes the device from the first argument only (for ops taking long
    tensor lists, whose backends check the other tensors' devices themselves); by default every tensor
    argument is checked to be on one device."""
    name = schema.split("(", 1)[0]
    _lib.define(schema)
    torch.library.register_fake(f"pyopt::{name}", fake, lib=_lib)
    arg_names = [a.name for a in getattr(torch.ops.pyopt, name).default._schema.arguments]
    if route_on_first_arg:
        arg_names = arg_names[:1]
    _lib.impl(name, make_router(name, arg_names, check), "CompositeExplicitAutograd")
    return name


# ----------------------------------------------------------------------------------------------------------
# quant: int8/uint8 quantize / dequantize Implementations: pyopt/ops/quant.py
#
# The router checks (pyopt/_op_checks.py) run before every backend: metadata (dtypes, shapes, ranges of scalar arguments)
# and, for tensor-valued scales / zero points, their values (a scale <= 0 or non-finite, a zero point out of
# range). The fake impls run the metadata part only (values are unknown at trace time).
# ----------------------------------------------------------------------------------------------------------


def _empty_out(x, dtype):
    return torch.empty(x.shape, dtype=dtype, device=x.device)


def _fake(meta_check, result):
    """A fake impl: the metadata checks, then the output shapes."""

    def fake(*args):
        meta_check(*args)
        return result(*args)

    return fake


QUANTIZE_PER_TENSOR = defop(
    "quantize_per_tensor(Tensor x, float scale, int zero_point, ScalarType dtype) -> Tensor",
    _fake(check_quantize_per_tensor, lambda x, s, z, dtype: _empty_out(x, dtype)),
    check_quantize_per_tensor,
)
QUANTIZE_PER_CHANNEL = defop(
    "quantize_per_channel(Tensor x, Tensor scales, Tensor zero_points, int axis, ScalarType dtype) -> Tensor",
    _fake(check_quantize_per_channel_meta, lambda x, s, z, axis, dtype: _empty_out(x, dtype)),
    check_quantize_per_channel,
)
QUANTIZE_PER_TOKEN = defop(
    "quantize_per_token(Tensor x, ScalarType dtype) -> (Tensor, Tensor)",
    _fake(
        check_quantize_per_token,
        lambda x, dtype: (
            _empty_out(x, dtype),
            torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device),
        ),
    ),
    check_quantize_per_token,
)
QUANTIZE_PER_GROUP = defop(
    "quantize_per_group(Tensor x, int group_size, ScalarType dtype, bool symmetric) -> (Tensor, Tensor, Tensor)",
    _fake(
        check_quantize_per_group,
        lambda x, gs, dtype, sym: (
            _empty_out(x, dtype),
            torch.empty((*x.shape[:-1], x.shape[-1] // gs), dtype=torch.float32, device=x.device),
            torch.empty((*x.shape[:-1], x.shape[-1] // gs), dtype=torch.int64, device=x.device),
        ),
    ),
    check_quantize_per_group,
)
DEQUANTIZE_PER_TENSOR = defop(
    "dequantize_per_tensor(Tensor q, float scale, int zero_point, ScalarType out_dtype) -> Tensor",
    _fake(check_dequantize_per_tensor, lambda q, s, z, out_dtype: _empty_out(q, out_dtype)),
    check_dequantize_per_tensor,
)
DEQUANTIZE_PER_CHANNEL = defop(
    "dequantize_per_channel(Tensor q, Tensor scales, Tensor zero_points, int axis, ScalarType out_dtype) -> Tensor",
    _fake(check_dequantize_per_channel_meta, lambda q, s, z, axis, out_dtype: _empty_out(q, out_dtype)),
    check_dequantize_per_channel,
)
DEQUANTIZE_PER_GROUP = defop(
    "dequantize_per_group(Tensor q, Tensor scales, Tensor zero_points, int group_size, ScalarType out_dtype) -> Tensor",
    _fake(check_dequantize_per_group_meta, lambda q, s, z, gs, out_dtype: _empty_out(q, out_dtype)),
    check_dequantize_per_group,
)


def _defop_dequantize_out(name: str, params: str, check_meta: Callable, check: Callable) -> str:
    """`<name>_out(q, <params>, Tensor(a!) out) -> ()`: the dequantize op written into the caller's float
    tensor of q's shape (its dtype is the output dtype). Why: a fresh 64 MB float32 result costs more in
    page faults (the kernel zeroing new pages) than the dequantize itself on a CPU; a reused buffer does not."""

    def with_out(fn):
        def run(q, *rest):
            *params_, out = rest
            fn(q, *params_, out.dtype)
            if out.shape != q.shape:
                raise ValueError(f"out must have q's shape {tuple(q.shape)}, got {tuple(out.shape)}")
            if out.device != q.device:
                raise ValueError(f"out must be on q's device ({q.device}), got {out.device}")

        return run

    meta = with_out(check_meta)
    return defop(f"{name}_out(Tensor q, {params}, Tensor(a!) out) -> ()", meta, with_out(check))


DEQUANTIZE_PER_TENSOR_OUT = _defop_dequantize_out(
    "dequantize_per_tensor",
    "float scale, int zero_point",
    check_dequantize_per_tensor,
    check_dequantize_per_tensor,
)
DEQUANTIZE_PER_CHANNEL_OUT = _defop_dequantize_out(
    "dequantize_per_channel",
    "Tensor scales, Tensor zero_points, int axis",
    check_dequantize_per_channel_meta,
    check_dequantize_per_channel,
)
DEQUANTIZE_PER_GROUP_OUT = _defop_dequantize_out(
    "dequantize_per_group",
    "Tensor scales, Tensor zero_points, int group_size",
    check_dequantize_per_group_meta,
    check_dequantize_per_group,
)


# ----------------------------------------------------------------------------------------------------------
# int8 / binary layers Implementations: pyopt/ops/int8_linear.py, ...
# ----------------------------------------------------------------------------------------------------------


def _int8_linear_fake(x, w_q, w_scales, bias):
    check_int8_linear(x, w_q, w_scales, bias)
    return x.new_empty((*x.shape[:-1], w_q.shape[0]))


# W8A8: per-token symmetric int8 activations (quantize_per_token's rule) x per-output-channel int8 weights,
# int32 accumulation, out = acc * sx[token] * w_scales[n] + bias[n] in x's dtype.
INT8_LINEAR_DYNAMIC = defop(
    "int8_linear_dynamic(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias) -> Tensor",
    _int8_linear_fake,
    check_int8_linear,
)
# W8A16/W8A32: out = (x @ w_q^T) * w_scales + bias, weights dequantised inside the GEMM/GEMV.
INT8_LINEAR_WEIGHT_ONLY = defop(
    "int8_linear_weight_only(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias) -> Tensor",
    _int8_linear_fake,
    check_int8_linear,
)


def _int8_conv2d_dynamic_fake(x, w_q, w_scales, bias, stride, padding, dilation):
    check_int8_conv2d(x, w_q, w_scales, bias, stride, padding, dilation)
    ho, wo = conv_out_hw(x, w_q, stride, padding, dilation)
    return x.new_empty((x.shape[0], w_q.shape[0], ho, wo)).contiguous(memory_format=torch.channels_last)


# Dynamic conv: one symmetric activation scale per sample (factors out of every im2col row of that image),
# per-output-channel int8 weights; output is a channels-last NCHW tensor in x's dtype.
INT8_CONV2D_DYNAMIC = defop(
    "int8_conv2d_dynamic(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias, int[2] stride, int[2] padding, "
    "int[2] dilation) -> Tensor",
    _int8_conv2d_dynamic_fake,
    check_int8_conv2d,
)


def _int8_conv2d_weight_only_fake(x, w_q, w_scales, bias, stride, padding, dilation):
    check_int8_conv2d(x, w_q, w_scales, bias, stride, padding, dilation)
    w = w_q.to(x.dtype)  # fake tensors: lets torch's own conv meta decide the output strides
    return torch.nn.functional.conv2d(x, w, None, stride, padding, dilation)


# Weight-only conv: the (small) conv weight is dequantised per call and torch's conv runs in x's dtype.
INT8_CONV2D_WEIGHT_ONLY = defop(
    "int8_conv2d_weight_only(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias, int[2] stride, "
    "int[2] padding, int[2] dilation) -> Tensor",
    _int8_conv2d_weight_only_fake,
    check_int8_conv2d,
)


# binary_linear: 1-bit sign weights packed 8 per byte (LSB first, bit 1 <=> W >= 0; rows padded to a whole
# byte, padding bits ignored), alpha = mean|W| per output channel (XNOR-Net BWN). With
# binary_activations=True the input is binarised too: sign(x) * mean|x| per row (XNOR + popcount).
# Output dtype = x.dtype; alpha and bias are float32. Implementations: pyopt/ops/binary_linear.py
BINARY_LINEAR = defop(
    "binary_linear(Tensor x, Tensor packed_weight, Tensor alpha, Tensor? bias, int in_features, "
    "bool binary_activations=False) -> Tensor",
    lambda x, packed_weight, alpha, bias, in_features, binary_activations=False: (
        check_binary_linear(x, packed_weight, alpha, bias, in_features, binary_activations),
        x.new_empty((*x.shape[:-1], packed_weight.shape[0])),
    )[1],
    check_binary_linear,
)


# ----------------------------------------------------------------------------------------------------------
# int8 embeddings Implementations: pyopt/ops/embedding.py (checks there too)
# ----------------------------------------------------------------------------------------------------------
# A table of int8 rows weight_q [num_embeddings, dim] with one float32 scale per row; a lookup dequantises only
# the rows it reads. Output: indices.shape + (dim,) / (bags, dim), in out_dtype.


def _embedding_int8_fake(indices, weight_q, row_scales, out_dtype):
    from .embedding import check_embedding_int8_meta

    check_embedding_int8_meta(indices, weight_q, row_scales, out_dtype)
    return torch.empty((*indices.shape, weight_q.shape[1]), dtype=out_dtype, device=indices.device)


def _embedding_int8_check(*args):
    from .embedding import check_embedding_int8

    check_embedding_int8(*args)


EMBEDDING_INT8 = defop(
    "embedding_int8(Tensor indices, Tensor weight_q, Tensor row_scales, ScalarType out_dtype) -> Tensor",
    _embedding_int8_fake,
    _embedding_int8_check,
)


def _embedding_bag_int8_fake(indices, offsets, weight_q, row_scales, psw, mode, last, padding_idx, out_dtype):
    from .embedding import check_embedding_bag_int8_meta

    check_embedding_bag_int8_meta(
        indices, offsets, weight_q, row_scales, psw, mode, last, padding_idx, out_dtype
    )
    bags = max(offsets.shape[0] - (1 if last else 0), 0)
    return torch.empty((bags, weight_q.shape[1]), dtype=out_dtype, device=indices.device)


def _embedding_bag_int8_check(*args):
    from .embedding import check_embedding_bag_int8

    check_embedding_bag_int8(*args)


# mode "sum" | "mean" | "max" (torch.nn.functional.embedding_bag's), per_sample_weights with "sum" only;
# entries equal to padding_idx are left out of their bag; an empty bag gives zeros.
EMBEDDING_BAG_INT8 = defop(
    "embedding_bag_int8(Tensor indices, Tensor offsets, Tensor weight_q, Tensor row_scales, "
    "Tensor? per_sample_weights, str mode, bool include_last_offset, int? padding_idx, "
    "ScalarType out_dtype) -> Tensor",
    _embedding_bag_int8_fake,
    _embedding_bag_int8_check,
)


# ----------------------------------------------------------------------------------------------------------
# sparse masked matmul Implementations: pyopt/ops/sparse.py
# ----------------------------------------------------------------------------------------------------------
# Weights are [out_features N, in_features K]; x is [..., K]; masks are bool [N, K] (True = kept).
# Training: sparse_masked_linear (autograd: grad_input + SDDMM below). Inference: CSR / BSR weights.


SPARSE_MASKED_LINEAR = defop(
    "sparse_masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias) -> Tensor",
    lambda x, weight, mask, bias: (
        check_sparse_masked_linear(x, weight, mask, bias),
        x.new_empty((*x.shape[:-1], weight.shape[0])),
    )[1],
    check_sparse_masked_linear,
)


SPARSE_MASKED_LINEAR_GRAD_INPUT = defop(
    "sparse_masked_linear_grad_input(Tensor grad_y, Tensor weight, Tensor mask) -> Tensor",
    lambda grad_y, weight, mask: (
        check_sparse_masked_linear_grad_input(grad_y, weight, mask),
        grad_y.new_empty((*grad_y.shape[:-1], weight.shape[1])),
    )[1],
    check_sparse_masked_linear_grad_input,
)


SPARSE_MASKED_SDDMM = defop(
    "sparse_masked_sddmm(Tensor grad_y, Tensor x, Tensor mask) -> Tensor",
    lambda grad_y, x, mask: (
        check_sparse_masked_sddmm(grad_y, x, mask),
        x.new_empty((grad_y.shape[-1], x.shape[-1])),
    )[1],
    check_sparse_masked_sddmm,
)


SPARSE_CSR_LINEAR = defop(
    "sparse_csr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
    "int out_features) -> Tensor",
    lambda x, crow_indices, col_indices, values, bias, out_features: (
        check_sparse_csr_linear(x, crow_indices, col_indices, values, bias, out_features),
        x.new_empty((*x.shape[:-1], out_features)),
    )[1],
    check_sparse_csr_linear,
)


SPARSE_CSR_INT8_LINEAR = defop(
    "sparse_csr_int8_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, "
    "Tensor row_scales, Tensor? bias, int out_features) -> Tensor",
    lambda x, crow_indices, col_indices, values, row_scales, bias, out_features: (
        check_sparse_csr_int8_linear(x, crow_indices, col_indices, values, row_scales, bias, out_features),
        x.new_empty((*x.shape[:-1], out_features)),
    )[1],
    check_sparse_csr_int8_linear,
)


SPARSE_BSR_LINEAR = defop(
    "sparse_bsr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
    "int out_features) -> Tensor",
    lambda x, crow_indices, col_indices, values, bias, out_features: (
        check_sparse_bsr_linear(x, crow_indices, col_indices, values, bias, out_features),
        x.new_empty((*x.shape[:-1], out_features)),
    )[1],
    check_sparse_bsr_linear,
)


# ----------------------------------------------------------------------------------------------------------
# fused SGD Implementations: pyopt/ops/sgd.py
# ----------------------------------------------------------------------------------------------------------


def _fake_fused_sgd(params, grads, momentum_buffers, master_params, masks, first_step, lr, *rest):
    check_fused_sgd_lists(params, grads, momentum_buffers, master_params, masks, first_step, lr, rest[-3])
    check_fused_sgd_tensors(params, grads, momentum_buffers, master_params, masks)


# One step of torch.optim.SGD (maximize -> weight decay -> momentum -> Nesterov -> lr) over many tensors,
# in place. first_step[i]: momentum_buffers[i] is uninitialised and becomes the (decayed) grad. masks[i]
# (None = dense): entries where it is False end exactly zero in the param, master and buffer. grad_scale:
# grads are multiplied by float32(1/grad_scale) first; found_inf != 0: nothing is written at all.
FUSED_SGD = defop(
    "fused_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
    "Tensor(c!)[] master_params, Tensor?[] masks, bool[] first_step, float lr, float weight_decay, "
    "float momentum, float dampening, bool nesterov, bool maximize, Tensor? lr_tensor, Tensor? grad_scale, "
    "Tensor? found_inf) -> ()",
    _fake_fused_sgd,
    lambda params, grads, bufs, masters, masks, first_step, lr, wd, mom, damp, nest, mx, lr_t, gs, fi: (
        check_fused_sgd_lists(params, grads, bufs, masters, masks, first_step, lr, lr_t)
    ),
    route_on_first_arg=True,  # thousands of tensors: every backend checks their devices itself
)
