"""Int8Conv2d: the drop-in int8 replacement for nn.Conv2d (inference), modes as Int8Linear (int8_linear.py).

Supports groups=1, zero padding, any kernel size/stride/padding/dilation. Depthwise/grouped convolutions
raise ValueError in from_float (keep them in float: they are memory-bound and tiny). Weight-only conv
dequantises the (small) conv weight per call and runs torch's conv: it saves memory, not time.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.native import direct
from .int8_linear import Int8Base, check_mode
from .registry import register_module

_DYNAMIC = direct("int8_conv2d_dynamic")
_WEIGHT_ONLY = direct("int8_conv2d_weight_only")


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


@register_module
class Int8Conv2d(Int8Base):
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
            check_mode(mode),
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
        op = _DYNAMIC if self.mode == "dynamic" else _WEIGHT_ONLY
        return op(x, self.weight, self.weight_scales, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, mode={self.mode}"
        )
