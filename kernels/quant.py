"""Triton kernels of the quant family (shipped as pyopt.kernels.quant).

Two elementwise kernels over the flat input: quantize and dequantize, each with its per-element parameters
either broadcast (per tensor) or indexed by channel = (i // inner) % C (per channel, per token: C = rows,
per group: C = groups). The rules are those of the C++ kernels (README "Quantize / dequantize"):

  per tensor        v = fma(x, inv, zp)          one rounding; NaN -> qmax
  otherwise         v = float32(x * inv) + zp    the product is rounded first; NaN -> 0
  q = round_half_even(clamp(v, lo, hi))

On the GPU the kernels are compiled with enable_fp_fusion=False, so `x * inv + zp` is never contracted into
an fma, and tl.fma is a true fma. The interpreter (TRITON_INTERPRET=1) evaluates tl.fma as two numpy float32
operations, so there the fma is emulated exactly in float64 with round-to-odd (same result). Rounding to even
uses the 1.5 * 2**23 trick (exact for |v| <= 2**22; v is clamped to [-128, 255] first), which needs no
libdevice (the interpreter has none).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK = 1024
# 1.5 * 2**23: (v + M) - M rounds v to an integer, ties to even.
# A tl.constexpr because jit code may only read constexpr globals.
_ROUND_MAGIC = tl.constexpr(12582912.0)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _fma_exact_f64(x, inv, zp):
    """float32 fma(x, inv, zp) via float64: the product is exact, the sum is rounded to odd (TwoSum's error
    sets the sticky bit), so the final rounding to float32 is correct."""
    p = x.to(tl.float64) * inv.to(tl.float64)
    z = zp.to(tl.float64)
    s = p + z
    b = s - p
    err = (p - (s - b)) + (z - b)
    odd = (s.to(tl.int64, bitcast=True) | (err != 0).to(tl.int64)).to(tl.float64, bitcast=True)
    return tl.where((s - s) == 0, odd, s).to(tl.float32)


@triton.jit
def _quantize_kernel(
    x_ptr,
    out_ptr,
    inv_ptr,
    zp_ptr,
    n,
    C,
    inner,
    lo,
    hi,
    nan_value,
    FMA_RULE: tl.constexpr,
    PER_CHANNEL: tl.constexpr,
    EMULATE_FMA: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if PER_CHANNEL:
        c = (offs // inner) % C
        inv = tl.load(inv_ptr + c, mask=mask, other=1.0)
        zp = tl.load(zp_ptr + c, mask=mask, other=0.0)
    else:
        inv = tl.load(inv_ptr)
        zp = tl.load(zp_ptr)
    if FMA_RULE:
        if EMULATE_FMA:
            v = _fma_exact_f64(x, inv + tl.zeros_like(x), zp + tl.zeros_like(x))
        else:
            v = tl.fma(x, inv, zp)
    else:
        v = x * inv + zp  # two roundings: fp fusion is off for this kernel
    v = tl.where(v != v, nan_value, v)
    v = tl.where(v < lo, lo, v)
    v = tl.where(v > hi, hi, v)
    r = (v + _ROUND_MAGIC) - _ROUND_MAGIC
    tl.store(out_ptr + offs, r.to(tl.int32).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequantize_kernel(
    q_ptr,
    out_ptr,
    scale_ptr,
    zp_ptr,
    n,
    C,
    inner,
    PER_CHANNEL: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int32)
    if PER_CHANNEL:
        c = (offs // inner) % C
        scale = tl.load(scale_ptr + c, mask=mask, other=1.0)
        zp = tl.load(zp_ptr + c, mask=mask, other=0.0)
    else:
        scale = tl.load(scale_ptr)
        zp = tl.load(zp_ptr)
    if F64:  # torch's per-channel dequantize: (q - zp) * scale in float64, rounded once to float32
        v = ((q.to(tl.float64) - zp.to(tl.float64)) * scale.to(tl.float64)).to(tl.float32)
    else:
        v = (q.to(tl.float32) - zp) * scale
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_options() -> dict:
    return {} if _interpreted() else {"enable_fp_fusion": False}


def quantize(x, inv, zp, lo, hi, dtype, *, fma_rule: bool, C: int = 1, inner: int = 1) -> torch.Tensor:
    """x (any float dtype/strides) -> int8/uint8 with float32 inv/zp of 1 (per tensor) or C elements."""
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return out
    per_channel = inv.numel() != 1 or C != 1
    _quantize_kernel[(triton.cdiv(n, BLOCK),)](
        x,
        out,
        inv.to(torch.float32).contiguous(),
        zp.to(torch.float32).contiguous(),
        n,
        C,
        max(inner, 1),
        float(lo),
        float(hi),
        float(hi if fma_rule else 0),
        FMA_RULE=fma_rule,
        PER_CHANNEL=per_channel,
        EMULATE_FMA=_interpreted(),
        BLOCK=BLOCK,
        **_launch_options(),
    )
    return out


def dequantize(q, scale, zp, out_dtype, *, C: int = 1, inner: int = 1) -> torch.Tensor:
    """(q - zp) * scale; scale float32 (float32 math) or float64 (float64 math, rounded once)."""
    q = q.contiguous()
    # The interpreter narrows float32 -> bfloat16 by truncation; torch (and the GPU's cvt.rn) round to even.
    narrow_on_host = out_dtype == torch.bfloat16 and _interpreted()
    out = torch.empty(q.shape, dtype=torch.float32 if narrow_on_host else out_dtype, device=q.device)
    n = q.numel()
    if n == 0:
        return out.to(out_dtype)
    f64 = scale.dtype == torch.float64
    _dequantize_kernel[(triton.cdiv(n, BLOCK),)](
        q,
        out,
        scale.contiguous(),
        zp.to(torch.float64 if f64 else torch.float32).contiguous(),
        n,
        C,
        max(inner, 1),
        PER_CHANNEL=scale.numel() != 1 or C != 1,
        F64=f64,
        BLOCK=BLOCK,
        **_launch_options(),
    )
    return out.to(out_dtype) if narrow_on_host else out
