"""Int8Linear: the drop-in int8 replacement for nn.Linear (inference); Int8Conv2d (int8_conv.py) shares its base.

Modes:
  "dynamic"      W8A8: activations quantised per token (linear) / per sample (conv) on the fly, int8 GEMM,
                 fused dequant epilogue. Fastest for batched inputs (M >= ~16 tokens).
  "weight_only"  W8A16/W8A32: int8 weights dequantised inside the GEMV/GEMM, activations stay float. Best
                 at small batch (decode, M of a few tokens), where reading the weights is the cost.

All state is in buffers (int8 `weight`, float32 per-output-channel `weight_scales`, float32 `bias`), so
state_dict, deepcopy, torch.save + torch.load(weights_only=True) and pyopt.save/load work; the forward is one
torch.ops.pyopt op, so torch.compile(fullgraph=True) sees no graph break.

"""

from __future__ import annotations

import torch
from torch import nn

from .._rules import quantize_rows_symmetric
from ..ops.native import direct
from .registry import check_features, check_finite_weight, keep_float32, register_module

_DYNAMIC = direct("int8_linear_dynamic")
_WEIGHT_ONLY = direct("int8_linear_weight_only")

MODES = ("dynamic", "weight_only")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def quantize_weight_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 (±127) of a [out, ...] weight -> (int8 same shape, float32 [out])."""
    q, scales = quantize_rows_symmetric(weight.detach().reshape(weight.shape[0], -1))
    return q.reshape(weight.shape), scales


class Int8Base(nn.Module):
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
class Int8Linear(Int8Base):
    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, mode: str = "dynamic", device=None
    ):
        super().__init__()
        self.in_features, self.out_features = check_features(in_features, out_features)
        self.mode = check_mode(mode)
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
        op = _DYNAMIC if self.mode == "dynamic" else _WEIGHT_ONLY
        return op(x, self.weight, self.weight_scales, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, mode={self.mode}"
