"""Autograd formulas of the differentiable pyopt:: ops, for builds without the native module.

The native module registers the same formulas in C++ on the Autograd key (csrc/autograd.cpp), so that a call
in grad mode reaches its kernel without a Python hop; these Python ones are registered only where it is absent
(PYOPT_NO_NATIVE=1, or an extension built against another torch).

- int8 linear / conv: w.r.t. x only (the int8 weights are frozen buffers). Weight-only: the exact gradient of
  x @ (s * w_q)^T. Dynamic: the straight-through estimator (activation rounding treated as identity), as in
  quantisation-aware training. The backward expands w_q to x's dtype (a training-time cost only).
- sparse_masked_linear: grad_x = grad_y (W*M) and grad_W = (grad_y^T x) * M, each its own op (SDDMM: pruned
  entries of grad_W are exactly 0, so W*M stays W*M under SGD); grad_b = sum of grad_y.
"""

from __future__ import annotations

import math

import torch

from . import native


def _linear_setup_context(ctx, inputs, output):
    _, w_q, w_scales, _ = inputs
    ctx.save_for_backward(w_q, w_scales)


def _linear_backward(ctx, grad):
    w_q, w_scales = ctx.saved_tensors
    grad_x = (grad.float() * w_scales) @ w_q.float()
    return grad_x.to(grad.dtype), None, None, None


def _conv_setup_context(ctx, inputs, output):
    x, w_q, w_scales, _, stride, padding, dilation = inputs
    ctx.save_for_backward(w_q, w_scales)
    ctx.x_shape, ctx.conv_args = x.shape, (stride, padding, dilation)


def _conv_backward(ctx, grad):
    w_q, w_scales = ctx.saved_tensors
    w_deq = w_q.float() * w_scales.view(-1, 1, 1, 1)
    grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, w_deq, grad.float(), *ctx.conv_args)
    return grad_x.to(grad.dtype), None, None, None, None, None, None


def _masked_linear_setup_context(ctx, inputs, output):
    x, weight, mask, bias = inputs
    ctx.save_for_backward(x, weight, mask)
    ctx.has_bias = bias is not None


def _masked_linear_backward(ctx, grad_y):
    x, weight, mask = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.pyopt.sparse_masked_linear_grad_input(grad_y, weight, mask)
    if ctx.needs_input_grad[1]:
        grad_w = torch.ops.pyopt.sparse_masked_sddmm(grad_y, x, mask)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_b = grad_y.reshape(math.prod(grad_y.shape[:-1]), grad_y.shape[-1]).sum(0)
    return grad_x, grad_w, None, grad_b


def _register() -> None:
    for _op in ("int8_linear_dynamic", "int8_linear_weight_only"):
        torch.library.register_autograd(
            f"pyopt::{_op}", _linear_backward, setup_context=_linear_setup_context
        )
    for _op in ("int8_conv2d_dynamic", "int8_conv2d_weight_only"):
        torch.library.register_autograd(f"pyopt::{_op}", _conv_backward, setup_context=_conv_setup_context)
    torch.library.register_autograd(
        "pyopt::sparse_masked_linear", _masked_linear_backward, setup_context=_masked_linear_setup_context
    )


if native.cpu_ext() is None:
    _register()
