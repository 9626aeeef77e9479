"""quant family: reference, cpu, triton and cuda implementations of the pyopt:: quantize / dequantize ops.

Every backend follows the rounding rules of pyopt/_rules.py (bit-exact with torch 2.13 on CPU).
"""

from __future__ import annotations

import math

import torch

from .._rules import (
    QRANGE,
    channel_view,
    fma_f32,
    per_group_qparams,
    per_token_scales,
    quantize_per_token,
    quantize_rounded_product,
    reciprocal_f32,
    round_clamp,
)
from .backends import register, requested_isa


# ----------------------------------------------------------------------------------------------------------
# reference (pure torch): the fallback on every device and the oracle of the tests
# ----------------------------------------------------------------------------------------------------------
@register("quantize_per_tensor", "reference")
def quantize_per_tensor_ref(x, scale, zero_point, dtype):
    inv = reciprocal_f32(torch.tensor(scale, dtype=torch.float32, device=x.device))
    lo, hi = QRANGE[dtype]
    return round_clamp(fma_f32(x.float(), inv, float(zero_point)), lo, hi, hi, dtype)


@register("quantize_per_channel", "reference")
def quantize_per_channel_ref(x, scales, zero_points, axis, dtype):
    axis = axis % x.dim()
    inv = channel_view(reciprocal_f32(scales.to(torch.float32)), axis, x.dim())
    zp = channel_view(zero_points.to(torch.float32), axis, x.dim())
    return quantize_rounded_product(x.float(), inv, zp, *QRANGE[dtype], dtype)


@register("quantize_per_token", "reference")
def quantize_per_token_ref(x, dtype):
    return quantize_per_token(x)


@register("quantize_per_group", "reference")
def quantize_per_group_ref(x, group_size, dtype, symmetric):
    xf = x.float()
    scales, zps = per_group_qparams(xf, group_size, dtype, symmetric)
    xg = xf.reshape(*scales.shape, group_size)
    inv = reciprocal_f32(scales).unsqueeze(-1)
    q = quantize_rounded_product(xg, inv, zps.unsqueeze(-1).float(), *QRANGE[dtype], dtype)
    return q.reshape(x.shape), scales, zps


@register("dequantize_per_tensor", "reference")
def dequantize_per_tensor_ref(q, scale, zero_point, out_dtype):
    s32 = float(torch.tensor(scale, dtype=torch.float32))
    return ((q.float() - float(zero_point)) * s32).to(out_dtype)


@register("dequantize_per_channel", "reference")
def dequantize_per_channel_ref(q, scales, zero_points, axis, out_dtype):
    # torch computes (q - zp) * scale in float64 (scales are float64 there) and rounds once to float32.
    axis = axis % q.dim()
    s = channel_view(scales.double(), axis, q.dim())
    zp = channel_view(zero_points.double(), axis, q.dim())
    return ((q.double() - zp) * s).float().to(out_dtype)


@register("dequantize_per_group", "reference")
def dequantize_per_group_ref(q, scales, zero_points, group_size, out_dtype):
    qg = q.float().reshape(*q.shape[:-1], q.shape[-1] // group_size, group_size)
    out = (qg - zero_points.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)
    return out.reshape(q.shape).to(out_dtype)


# ----------------------------------------------------------------------------------------------------------
# cpu: C++ (csrc/cpu/quant.cpp), AVX-512 / AVX2 / scalar chosen at run time, OpenMP over chunks
# ----------------------------------------------------------------------------------------------------------
@register("quantize_per_tensor", "cpu")
def quantize_per_tensor_cpu(x, scale, zero_point, dtype):
    return torch.ops.pyopt_cpu.quantize_per_tensor(x, scale, zero_point, dtype, requested_isa())


@register("quantize_per_channel", "cpu")
def quantize_per_channel_cpu(x, scales, zero_points, axis, dtype):
    return torch.ops.pyopt_cpu.quantize_per_channel(x, scales, zero_points, axis, dtype, requested_isa())


@register("quantize_per_token", "cpu")
def quantize_per_token_cpu(x, dtype):
    return torch.ops.pyopt_cpu.quantize_per_token(x, dtype, requested_isa())


@register("quantize_per_group", "cpu")
def quantize_per_group_cpu(x, group_size, dtype, symmetric):
    return torch.ops.pyopt_cpu.quantize_per_group(x, group_size, dtype, symmetric, requested_isa())


@register("dequantize_per_tensor", "cpu")
def dequantize_per_tensor_cpu(q, scale, zero_point, out_dtype):
    return torch.ops.pyopt_cpu.dequantize_per_tensor(q, scale, zero_point, out_dtype, requested_isa())


@register("dequantize_per_channel", "cpu")
def dequantize_per_channel_cpu(q, scales, zero_points, axis, out_dtype):
    return torch.ops.pyopt_cpu.dequantize_per_channel(
        q, scales, zero_points, axis, out_dtype, requested_isa()
    )


@register("dequantize_per_group", "cpu")
def dequantize_per_group_cpu(q, scales, zero_points, group_size, out_dtype):
    return torch.ops.pyopt_cpu.dequantize_per_group(
        q, scales, zero_points, group_size, out_dtype, requested_isa()
    )


# ----------------------------------------------------------------------------------------------------------
# triton: kernels/quant.py (pyopt.kernels.quant), imported on first use; qparams of per-token / per-group
# come from the torch code above (reductions), the elementwise pass from the kernel
# ----------------------------------------------------------------------------------------------------------
def _tq():
    from ..kernels import quant as triton_quant

    return triton_quant


def _scalar_params(scale: float, zero_point: int, device):
    s32 = torch.tensor([scale], dtype=torch.float32, device=device)
    return s32, torch.tensor([float(zero_point)], dtype=torch.float32, device=device)


def _around_axis(shape, axis: int) -> tuple[int, int]:
    """(C, inner) of a tensor viewed as (outer, C, inner) around `axis`."""
    axis = axis % len(shape)
    return shape[axis], math.prod(shape[axis + 1 :])


@register("quantize_per_tensor", "triton")
def quantize_per_tensor_triton(x, scale, zero_point, dtype):
    s32, zp = _scalar_params(scale, zero_point, x.device)
    return _tq().quantize(x, reciprocal_f32(s32), zp, *QRANGE[dtype], dtype, fma_rule=True)


@register("quantize_per_channel", "triton")
def quantize_per_channel_triton(x, scales, zero_points, axis, dtype):
    C, inner = _around_axis(x.shape, axis)
    inv = reciprocal_f32(scales.to(torch.float32))
    return _tq().quantize(x, inv, zero_points, *QRANGE[dtype], dtype, fma_rule=False, C=C, inner=inner)


@register("quantize_per_token", "triton")
def quantize_per_token_triton(x, dtype):
    scales = per_token_scales(x.float())
    inv = reciprocal_f32(scales)
    zp = torch.zeros_like(inv)
    q = _tq().quantize(
        x, inv, zp, -127, 127, dtype, fma_rule=False, C=max(scales.numel(), 1), inner=x.shape[-1]
    )
    return q, scales


@register("quantize_per_group", "triton")
def quantize_per_group_triton(x, group_size, dtype, symmetric):
    scales, zps = per_group_qparams(x.float(), group_size, dtype, symmetric)
    q = _tq().quantize(
        x,
        reciprocal_f32(scales),
        zps,
        *QRANGE[dtype],
        dtype,
        fma_rule=False,
        C=max(scales.numel(), 1),
        inner=group_size,
    )
    return q, scales, zps


@register("dequantize_per_tensor", "triton")
def dequantize_per_tensor_triton(q, scale, zero_point, out_dtype):
    return _tq().dequantize(q, *_scalar_params(scale, zero_point, q.device), out_dtype)


@register("dequantize_per_channel", "triton")
def dequantize_per_channel_triton(q, scales, zero_points, axis, out_dtype):
    C, inner = _around_axis(q.shape, axis)
    return _tq().dequantize(q, scales, zero_points, out_dtype, C=C, inner=inner)


@register("dequantize_per_group", "triton")
def dequantize_per_group_triton(q, scales, zero_points, group_size, out_dtype):
    C = max(scales.numel(), 1)
    return _tq().dequantize(q, scales.to(torch.float32), zero_points, out_dtype, C=C, inner=group_size)


# ----------------------------------------------------------------------------------------------------------
# cuda: csrc/cuda/quant.cu through csrc/cuda/quant_bind.cpp (pyopt._C_cuda, loaded on first CUDA use)
# ----------------------------------------------------------------------------------------------------------
@register("quantize_per_tensor", "cuda")
def quantize_per_tensor_cuda(x, scale, zero_point, dtype):
    return torch.ops.pyopt_cuda.quantize_per_tensor(x, scale, zero_point, dtype)


@register("quantize_per_channel", "cuda")
def quantize_per_channel_cuda(x, scales, zero_points, axis, dtype):
    return torch.ops.pyopt_cuda.quantize_per_channel(x, scales, zero_points, axis, dtype)


@register("quantize_per_token", "cuda")
def quantize_per_token_cuda(x, dtype):
    return torch.ops.pyopt_cuda.quantize_per_token(x, dtype)


@register("quantize_per_group", "cuda")
def quantize_per_group_cuda(x, group_size, dtype, symmetric):
    return torch.ops.pyopt_cuda.quantize_per_group(x, group_size, dtype, symmetric)


@register("dequantize_per_tensor", "cuda")
def dequantize_per_tensor_cuda(q, scale, zero_point, out_dtype):
    return torch.ops.pyopt_cuda.dequantize_per_tensor(q, scale, zero_point, out_dtype)


@register("dequantize_per_channel", "cuda")
def dequantize_per_channel_cuda(q, scales, zero_points, axis, out_dtype):
    return torch.ops.pyopt_cuda.dequantize_per_channel(q, scales, zero_points, axis, out_dtype)


@register("dequantize_per_group", "cuda")
def dequantize_per_group_cuda(q, scales, zero_points, group_size, out_dtype):
    return torch.ops.pyopt_cuda.dequantize_per_group(q, scales, zero_points, group_size, out_dtype)


# ----------------------------------------------------------------------------------------------------------
# dequantize into the caller's tensor (pyopt::dequantize_*_out). CPU: the C++ kernels write into `out`
# directly (no fresh pages to fault in). Elsewhere: the allocating op, then a copy — on CUDA the caching
# allocator already makes the fresh output cheap, so a dedicated kernel would buy little.
# ----------------------------------------------------------------------------------------------------------
_DEQUANTIZE_REFS = {
    "dequantize_per_tensor": dequantize_per_tensor_ref,
    "dequantize_per_channel": dequantize_per_channel_ref,
    "dequantize_per_group": dequantize_per_group_ref,
}


def _register_out_variant(name: str) -> None:
    cpu_out = f"{name}_out"

    def by_copy(q, *rest):
        *params, out = rest
        out.copy_(getattr(torch.ops.pyopt, name)(q, *params, out.dtype))

    with_ref = _DEQUANTIZE_REFS[name]

    def reference(q, *rest):
        *params, out = rest
        out.copy_(with_ref(q, *params, out.dtype))

    def cpu(q, *rest):
        getattr(torch.ops.pyopt_cpu, cpu_out)(q, *rest, requested_isa())

    register(cpu_out, "reference")(reference)
    register(cpu_out, "cpu")(cpu)
    register(cpu_out, "cuda")(by_copy)
    register(cpu_out, "triton")(by_copy)


for _name in _DEQUANTIZE_REFS:
    _register_out_variant(_name)
