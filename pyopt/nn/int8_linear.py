"""Int8Linear and Int8Conv2d: drop-in int8 replacements for nn.Linear / nn.Conv2d (inference).

Modes:
  "dynamic"      W8A8: activations quantised per token (linear) / per sample (conv) on the fly, int8 GEMM,
                 fused dequant epilogue. Fastest for batched inputs (M >= ~16 tokens).
  "weight_only"  W8A16/W8A32: int8 weights dequantised inside the GEMV/GEMM, activations stay float. Best
                 at small batch (decode, M of a few tokens), where reading the weights is the cost.

All state is in buffers (int8 `weight`, float32 per-output-channel `weight_scales`, float32 `bias`), so
state_dict, deepcopy, torch.save + torch.load(weights_only=True) and pyopt.save/load work; the forward is one
torch.ops.pyopt op, so torch.compile(fullgraph=True) sees no graph break.

Int8Conv2d supports groups=1, zero padding, any kernel size/stride/padding/dilation. Depthwise/grouped
convolutions raise ValueError in from_float (keep them in float: they are memory-bound and tiny).
Weight-only conv dequantises the (small) conv weight per call and runs torch's conv: it saves memory, not
time.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.int8_linear import quantize_rows_symmetric
from ._base import check_features, check_finite_weight, keep_float32, register_module

MODES = ("dynamic", "weight_only")


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def quantize_weight_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 (±127) of a [out, ...] weight -> (int8 same shape, float32 [out])."""
    q, scales = quantize_rows_symmetric(weight.detach().reshape(weight.shape[0], -1))
    return q.reshape(weight.shape), scales


class _Int8Base(nn.Module):
    """Buffers and from_float shared by the int8 layers."""

    def _init_buffers(self, weight_shape, bias: bool, device) -> None:
        self.register_buffer("weight", torch.zeros(weight_shape, dtype=torch.int8, device=device))
        self.register_buffer("weight_scales", torch.ones(weight_shape[0], dtype=torch.float32, device=device))
        bias_t = torch.zeros(weight_shape[0], dtype=torch.float32, device=device) if bias else None
        self.register_buffer("bias", bias_t)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        keep_float32(self, "weight_scales", "bias")
        return out

    def _load_float(self, module: nn.Module) -> None:
        check_finite_weight(module.weight)
        q, scales = quantize_weight_per_channel(module.weight)
        self.weight.copy_(q)
        self.weight_scales.copy_(scales)
        if module.bias is not None:
            self.bias.copy_(module.bias.detach().float())

    @classmethod
    def from_config(cls, cfg: dict):
        return cls(**cfg)


@register_module
class Int8Linear(_Int8Base):
    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, mode: str = "dynamic", device=None
    ):
        super().__init__()
        self.in_features, self.out_features = check_features(in_features, out_features)
        self.mode = _check_mode(mode)
        self._init_buffers((self.out_features, self.in_features), bias, device)

    @classmethod
    def from_float(cls, linear: nn.Linear, mode: str = "dynamic") -> Int8Linear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        mod = cls(
            linear.in_features, linear.out_features, linear.bias is not None, mode, linear.weight.device
        )
        mod._load_float(linear)
        return mod

    def extra_config(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "mode": self.mode,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = (
            torch.ops.pyopt.int8_linear_dynamic
            if self.mode == "dynamic"
            else torch.ops.pyopt.int8_linear_weight_only
        )
        return op(x, self.weight, self.weight_scales, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, mode={self.mode}"


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


@register_module
class Int8Conv2d(_Int8Base):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = True,
        mode: str = "dynamic",
        device=None,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.mode = (
            int(in_channels),
            int(out_channels),
            _check_mode(mode),
        )
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self._init_buffers((self.out_channels, self.in_channels, *self.kernel_size), bias, device)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, mode: str = "dynamic") -> Int8Conv2d:
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(
                f"Int8Conv2d supports groups=1 only (got groups={conv.groups}); keep it in float"
            )
        if conv.padding_mode != "zeros":
            raise ValueError(f"Int8Conv2d supports padding_mode='zeros' only, got {conv.padding_mode!r}")
        if isinstance(conv.padding, str):
            raise ValueError(f"Int8Conv2d needs explicit integer padding, got padding={conv.padding!r}")
        mod = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.bias is not None,
            mode,
            conv.weight.device,
        )
        mod._load_float(conv)
        return mod

    def extra_config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "bias": self.bias is not None,
            "mode": self.mode,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = (
            torch.ops.pyopt.int8_conv2d_dynamic
            if self.mode == "dynamic"
            else torch.ops.pyopt.int8_conv2d_weight_only
        )
        return op(x, self.weight, self.weight_scales, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, mode={self.mode}"
        )
