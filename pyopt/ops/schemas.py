"""Every `pyopt::` op: its schema and its fake (shape) implementation, in one place.

The kernels are registered on the dispatcher's own keys by the modules that own them: the C++ CPU kernels
(csrc/cpu/<stem>.cpp) for `CPU`, the CUDA kernels (csrc/cuda) or Triton (pyopt/ops/triton) for `CUDA`, the
pure-torch references (pyopt/ops/reference) for `CompositeExplicitAutograd` (every other device). A call
`torch.ops.pyopt.<op>(...)` therefore reaches its kernel in one hop. The fakes run the metadata checks of
pyopt/ops/checks.py (shapes, dtypes, scalar arguments), so torch.compile reports bad input at trace time with
the message every kernel gives (ValueError / TypeError naming the argument).
Out-of-place and `out=` variants are overloads of one op (`pyopt::dequantize_per_tensor.out`), as in torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import checks as C

LIB = torch.library.Library("pyopt", "DEF")  # noqa: TOR901 - owned by this module for the process lifetime


def defop(schema: str, check: Callable, result: Callable) -> None:
    """Declare `pyopt::<schema>` with its fake: `check(*args)` (metadata only), then `result(*args)`."""
    name = schema.split("(", 1)[0]
    LIB.define(schema)

    def fake(*args, **kwargs):
        check(*args, **kwargs)
        return result(*args, **kwargs)

    torch.library.register_fake(f"pyopt::{name}", fake, lib=LIB)


def like(x: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)


def rows_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """x's leading dims + (n,), x's dtype."""
    return x.new_empty((*x.shape[:-1], n))


# ----------------------------------------------------------------------------------------------------------
# quant: int8/uint8 quantize / dequantize. Rules: pyopt/_rules.py
# ----------------------------------------------------------------------------------------------------------
defop(
    "quantize_per_tensor(Tensor x, float scale, int zero_point, ScalarType dtype) -> Tensor",
    C.check_quantize_per_tensor,
    lambda x, scale, zero_point, dtype: like(x, dtype),
)
defop(
    "quantize_per_channel(Tensor x, Tensor scales, Tensor zero_points, int axis, ScalarType dtype) -> Tensor",
    C.check_quantize_per_channel_meta,
    lambda x, scales, zero_points, axis, dtype: like(x, dtype),
)
defop(
    "quantize_per_token(Tensor x, ScalarType dtype) -> (Tensor, Tensor)",
    C.check_quantize_per_token,
    lambda x, dtype: (like(x, dtype), torch.empty((*x.shape[:-1], 1), device=x.device)),
)
defop(
    "quantize_per_group(Tensor x, int group_size, ScalarType dtype, bool symmetric) -> (Tensor, Tensor, Tensor)",
    C.check_quantize_per_group,
    lambda x, group_size, dtype, symmetric: (
        like(x, dtype),
        torch.empty((*x.shape[:-1], x.shape[-1] // group_size), device=x.device),
        torch.empty((*x.shape[:-1], x.shape[-1] // group_size), dtype=torch.int64, device=x.device),
    ),
)
# dequantize: a fresh result of out_dtype, or (.out) into the caller's float tensor of q's shape, whose dtype
# is the output dtype (.out returns nothing: torch.compile functionalizes a custom op only when its outputs
# alias no input). Why .out: on a CPU a fresh 64 MB float32 result costs more in page faults (the kernel
# zeroing new pages) than the dequantize itself; a reused buffer does not.
_DEQUANTIZE = {
    "dequantize_per_tensor": ("float scale, int zero_point", C.check_dequantize_per_tensor),
    "dequantize_per_channel": (
        "Tensor scales, Tensor zero_points, int axis",
        C.check_dequantize_per_channel_meta,
    ),
    "dequantize_per_group": (
        "Tensor scales, Tensor zero_points, int group_size",
        C.check_dequantize_per_group_meta,
    ),
}
for _name, (_params, _check) in _DEQUANTIZE.items():
    defop(
        f"{_name}(Tensor q, {_params}, ScalarType out_dtype) -> Tensor",
        _check,
        lambda q, *rest: like(q, rest[-1]),
    )
    defop(
        f"{_name}.out(Tensor q, {_params}, *, Tensor(a!) out) -> ()",
        C.with_out(_check),
        lambda q, *params, out: None,
    )


# ----------------------------------------------------------------------------------------------------------
# int8 / binary layers
# ----------------------------------------------------------------------------------------------------------
# W8A8: per-token symmetric int8 activations (quantize_per_token's rule) x per-output-channel int8 weights,
# int32 accumulation, out = acc * sx[token] * w_scales[n] + bias[n] in x's dtype.
defop(
    "int8_linear_dynamic(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias) -> Tensor",
    C.check_int8_linear,
    lambda x, w_q, w_scales, bias: rows_to(x, w_q.shape[0]),
)
# W8A16/W8A32: out = (x @ w_q^T) * w_scales + bias, weights dequantised inside the GEMM/GEMV.
defop(
    "int8_linear_weight_only(Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias) -> Tensor",
    C.check_int8_linear,
    lambda x, w_q, w_scales, bias: rows_to(x, w_q.shape[0]),
)
# Dynamic conv: one symmetric activation scale per sample (factors out of every im2col row of that image),
# per-output-channel int8 weights; output is a channels-last NCHW tensor in x's dtype.
_CONV_ARGS = (
    "Tensor x, Tensor w_q, Tensor w_scales, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation"
)
defop(
    f"int8_conv2d_dynamic({_CONV_ARGS}) -> Tensor",
    C.check_int8_conv2d,
    lambda x, w_q, w_scales, bias, stride, padding, dilation: x.new_empty(
        (x.shape[0], w_q.shape[0], *C.conv_out_hw(x, w_q, stride, padding, dilation))
    ).contiguous(memory_format=torch.channels_last),
)
# Weight-only conv: the (small) conv weight is dequantised per call and torch's conv runs in x's dtype (torch's
# own conv meta decides the output strides, on fake tensors).
defop(
    f"int8_conv2d_weight_only({_CONV_ARGS}) -> Tensor",
    C.check_int8_conv2d,
    lambda x, w_q, w_scales, bias, stride, padding, dilation: torch.nn.functional.conv2d(
        x, w_q.to(x.dtype), None, stride, padding, dilation
    ),
)
# binary_linear: 1-bit sign weights packed 8 per byte (pyopt/_rules.py pack_signs), alpha = mean|W| per output
# channel (XNOR-Net BWN). With binary_activations=True the input is binarised too: sign(x) * mean|x| per row
# (XNOR + popcount). Output dtype = x.dtype; alpha and bias are float32.
defop(
    "binary_linear(Tensor x, Tensor packed_weight, Tensor alpha, Tensor? bias, int in_features, "
    "bool binary_activations=False) -> Tensor",
    C.check_binary_linear,
    lambda x, packed_weight, alpha, bias, in_features, binary_activations=False: rows_to(
        x, packed_weight.shape[0]
    ),
)


# ----------------------------------------------------------------------------------------------------------
# int8 embeddings
# ----------------------------------------------------------------------------------------------------------
# A table of int8 rows weight_q [num_embeddings, dim] with one float32 scale per row; a lookup dequantises only
# the rows it reads. Output: indices.shape + (dim,) / (bags, dim), in out_dtype.
defop(
    "embedding_int8(Tensor indices, Tensor weight_q, Tensor row_scales, ScalarType out_dtype) -> Tensor",
    C.check_embedding_int8_meta,
    lambda indices, weight_q, row_scales, out_dtype: torch.empty(
        (*indices.shape, weight_q.shape[1]), dtype=out_dtype, device=indices.device
    ),
)
# mode "sum" | "mean" | "max" (torch.nn.functional.embedding_bag's), per_sample_weights with "sum" only;
# entries equal to padding_idx are left out of their bag; an empty bag gives zeros.
defop(
    "embedding_bag_int8(Tensor indices, Tensor offsets, Tensor weight_q, Tensor row_scales, "
    "Tensor? per_sample_weights, str mode, bool include_last_offset, int? padding_idx, "
    "ScalarType out_dtype) -> Tensor",
    C.check_embedding_bag_int8_meta,
    lambda indices, offsets, weight_q, row_scales, psw, mode, last, padding_idx, out_dtype: torch.empty(
        (max(offsets.shape[0] - (1 if last else 0), 0), weight_q.shape[1]),
        dtype=out_dtype,
        device=indices.device,
    ),
)


# ----------------------------------------------------------------------------------------------------------
# sparse masked matmul and compressed sparse linears
# ----------------------------------------------------------------------------------------------------------
# Weights are [out_features N, in_features K]; x is [..., K]; masks are bool [N, K] (True = kept). Training:
# sparse_masked_linear (autograd: grad_input + SDDMM). Inference: CSR / BSR / csr_int8 weights.
# Semantics (every backend): y[m, n] = sum over the kept / stored entries (n, k) of w[n, k] * x[m, k] + b[n];
# a pruned weight is a structural zero, so an inf/NaN in x reaches y only through weights that are kept.
defop(
    "sparse_masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias) -> Tensor",
    C.check_sparse_masked_linear,
    lambda x, weight, mask, bias: rows_to(x, weight.shape[0]),
)
defop(
    "sparse_masked_linear_grad_input(Tensor grad_y, Tensor weight, Tensor mask) -> Tensor",
    C.check_sparse_masked_linear_grad_input,
    lambda grad_y, weight, mask: rows_to(grad_y, weight.shape[1]),
)
defop(
    "sparse_masked_sddmm(Tensor grad_y, Tensor x, Tensor mask) -> Tensor",
    C.check_sparse_masked_sddmm,
    lambda grad_y, x, mask: x.new_empty((grad_y.shape[-1], x.shape[-1])),
)
defop(
    "sparse_csr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
    "int out_features) -> Tensor",
    C.check_sparse_csr_linear,
    lambda x, crow, col, values, bias, out_features: rows_to(x, out_features),
)
defop(
    "sparse_csr_int8_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, "
    "Tensor row_scales, Tensor? bias, int out_features) -> Tensor",
    C.check_sparse_csr_int8_linear,
    lambda x, crow, col, values, row_scales, bias, out_features: rows_to(x, out_features),
)
defop(
    "sparse_bsr_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
    "int out_features) -> Tensor",
    C.check_sparse_bsr_linear,
    lambda x, crow, col, values, bias, out_features: rows_to(x, out_features),
)


# ----------------------------------------------------------------------------------------------------------
# fused SGD
# ----------------------------------------------------------------------------------------------------------
# One step of torch.optim.SGD (maximize -> weight decay -> momentum -> Nesterov -> lr) over many tensors, in
# place. first_step[i]: momentum_buffers[i] is uninitialised and becomes the (decayed) grad. masks[i] (None =
# dense): entries where it is False end exactly zero in the param, master and buffer. lr_tensor (1 element)
# replaces lr; grad_scale: grads are multiplied by float32(1 / grad_scale) first; found_inf != 0: nothing is
# written at all.
defop(
    "fused_sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
    "Tensor(c!)[] master_params, Tensor?[] masks, bool[] first_step, float lr, float weight_decay, "
    "float momentum, float dampening, bool nesterov, bool maximize, Tensor? lr_tensor, Tensor? grad_scale, "
    "Tensor? found_inf) -> ()",
    C.check_fused_sgd,
    lambda *args: None,
)
