"""The tensor-level functional API: quantize / dequantize (int8 / uint8), bit-exact with torch's quantizers on CPU.

Each function validates its arguments and calls one `torch.ops.pyopt.*` op, which routes to the fastest
backend for the input's device (pyopt/ops/). Rounding rules: README "Quantize / dequantize".
"""

from __future__ import annotations

import numbers

import torch

from ._rules import qparams_from_minmax
from .ops.checks import check_axis, check_quant_dtype, check_quant_input
from .ops.native import direct

_QUANTIZE_PER_TENSOR = direct("quantize_per_tensor")

__all__ = [
    "choose_qparams",
    "dequantize_per_channel",
    "dequantize_per_group",
    "dequantize_per_tensor",
    "quantize_per_channel",
    "quantize_per_group",
    "quantize_per_tensor",
    "quantize_per_token",
]


def _scalar(name: str, value, kind):
    """A Python float/int from a number or a one-element tensor (e.g. what choose_qparams returns)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    if kind is int and not isinstance(value, numbers.Integral):
        if not float(value).is_integer():
            raise ValueError(f"{name} must be an integer, got {value}")
    return kind(value)


def _as_tensor(name: str, value, like: torch.Tensor, dtype) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value, dtype=dtype, device=like.device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a tensor or a sequence of numbers: {e}") from None


def quantize_per_tensor(x: torch.Tensor, scale, zero_point, dtype=torch.int8) -> torch.Tensor:
    """q = clamp(rne(fma(x, 1/scale, zero_point))) as a plain int8/uint8 tensor (contiguous, x's shape).

    Equals torch.quantize_per_tensor(x, scale, zero_point, qint8/quint8).int_repr(); NaN -> qmax.
    """
    scale = _scalar("scale", scale, float)
    zero_point = _scalar("zero_point", zero_point, int)
    return _QUANTIZE_PER_TENSOR(x, scale, zero_point, dtype)


def quantize_per_channel(x: torch.Tensor, scales, zero_points, axis: int, dtype=torch.int8) -> torch.Tensor:
    """q = clamp(rne(float32(x * inv[c]) + zp[c])) along `axis`; = torch.quantize_per_channel(...).int_repr().

    scales: float32/float64, zero_points: integers, both of length x.shape[axis]. NaN -> 0.
    """
    scales = _as_tensor("scales", scales, x, torch.float64)
    zero_points = _as_tensor("zero_points", zero_points, x, torch.int64)
    return torch.ops.pyopt.quantize_per_channel(x, scales, zero_points, int(axis), dtype)


def quantize_per_token(x: torch.Tensor, dtype=torch.int8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization of each row of the last dim (dynamic W8A8 activations).

    scales = amax|x| / 127 (float32, shape x.shape[:-1] + (1,); 0 -> 1.0);
    q = clamp(rne(float32(x * float32(1 / scales))), -127, 127). A row with NaN gets scale NaN and q = 0.
    """
    return torch.ops.pyopt.quantize_per_token(x, dtype)


def quantize_per_group(
    x: torch.Tensor, group_size: int, dtype=torch.int8, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize groups of `group_size` consecutive elements of the last dim, each with its own qparams.

    Each group's (scale, zero_point) is what choose_qparams(group, dtype=dtype, symmetric=symmetric)
    gives (torch.ao MinMaxObserver rules); q follows the per-channel rule. Returns (q, scales float32,
    zero_points int64), the last two of shape x.shape[:-1] + (x.shape[-1] // group_size,).
    """
    return torch.ops.pyopt.quantize_per_group(x, int(group_size), dtype, bool(symmetric))


# out=: every dequantize can write into the caller's float tensor of q's shape (out_dtype is then out.dtype).
# On a CPU that is the fast way to dequantize repeatedly: a fresh 64 MB float32 result costs more in page
# faults than the kernel itself (README "Speed (CPU)").
def _dequantize(op: str, q, params: tuple, out_dtype, out):
    if out is None:
        return getattr(torch.ops.pyopt, op)(q, *params, out_dtype)
    if not isinstance(out, torch.Tensor):  # before the dispatcher, whose message does not say what to pass
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    getattr(torch.ops.pyopt, op).out(q, *params, out=out)
    return out


def dequantize_per_tensor(
    q: torch.Tensor, scale, zero_point, out_dtype=torch.float32, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(float32(q) - zero_point) * float32(scale), then cast to out_dtype; = torch's .dequantize()."""
    scale = _scalar("scale", scale, float)
    zero_point = _scalar("zero_point", zero_point, int)
    return _dequantize("dequantize_per_tensor", q, (scale, zero_point), out_dtype, out)


def dequantize_per_channel(
    q: torch.Tensor,
    scales,
    zero_points,
    axis: int,
    out_dtype=torch.float32,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32((q - zp[c]) * scales[c]) computed in float64 (as torch's .dequantize()), then out_dtype."""
    scales = _as_tensor("scales", scales, q, torch.float64)
    zero_points = _as_tensor("zero_points", zero_points, q, torch.int64)
    return _dequantize("dequantize_per_channel", q, (scales, zero_points, int(axis)), out_dtype, out)


def dequantize_per_group(
    q: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor,
    group_size: int,
    out_dtype=torch.float32,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(float32(q) - zp[g]) * float32(scales[g]) for each group of the last dim (inverse of quantize_per_group)."""
    return _dequantize("dequantize_per_group", q, (scales, zero_points, int(group_size)), out_dtype, out)


def choose_qparams(
    x: torch.Tensor,
    axis: int | None = None,
    dtype=torch.int8,
    symmetric: bool = False,
    reduce_range: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) as torch.ao's MinMaxObserver (axis=None) / PerChannelMinMaxObserver(ch_axis=axis).

    Returns a 0-d float32 scale and 0-d int64 zero point per tensor, or 1-d tensors of length
    x.shape[axis] per channel. The range always includes 0; scales are at least float32 eps; an empty
    input gives scale 1.0, zero point 0 (per channel: for each of the x.shape[axis] channels, where the
    observer returns a single default pair).
    """
    check_quant_input("x", x)
    check_quant_dtype("dtype", dtype)
    xf = x.detach().float()
    if axis is None:
        y = xf.reshape(1, -1)
    else:
        ax = check_axis("axis", axis, x.dim())
        if x.dim() == 0:
            raise ValueError("x must have at least 1 dimension for per-channel qparams")
        C = x.shape[ax]
        y = xf.movedim(ax, 0).reshape(C, x.numel() // C if C else 0)
    if y.shape[1] == 0:
        scale = torch.ones(y.shape[0], dtype=torch.float32, device=x.device)
        zp = torch.zeros(y.shape[0], dtype=torch.int64, device=x.device)
    else:
        mn, mx = torch.aminmax(y, dim=1)
        scale, zp = qparams_from_minmax(mn, mx, dtype, symmetric, reduce_range)
    if axis is None:
        return scale[0], zp[0]
    return scale, zp
