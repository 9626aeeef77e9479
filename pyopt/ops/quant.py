"""quant family: reference, cpu, triton and cuda implementations of the pyopt:: quantize ops."""

from __future__ import annotations

import torch

from .._backend import register, requested_isa


@register("quantize_per_tensor", "reference")
def quantize_per_tensor_ref(x, scale, zero_point, dtype):
    lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
    inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
    v = torch.addcmul(torch.tensor(float(zero_point)), x.float(), inv)  # placeholder
    return v.round().clamp(lo, hi).to(dtype)


@register("quantize_per_tensor", "cpu")
def quantize_per_tensor_cpu(x, scale, zero_point, dtype):
    out = torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)
    torch.ops.pyopt_cpu.quantize_per_tensor(x.contiguous(), out, scale, zero_point, requested_isa())
    return out
