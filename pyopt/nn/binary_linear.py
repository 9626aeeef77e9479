"""BinaryLinear: a drop-in inference replacement for nn.Linear with 1-bit sign weights (XNOR-Net BWN).

Weights are stored as packed sign bits (uint8, 8 per byte, 32x smaller than float32) plus a float32 scale
alpha = mean|W| per output channel; forward computes x @ (alpha * sign(W))^T + b from the bits
(torch.ops.pyopt.binary_linear) without materialising a float weight. `binary_activations=True` also
binarises the input per row (sign(x) * mean|x|, XNOR + popcount). Layout: pyopt/ops/binary_linear.py.
Inference only (no autograd through the packed weights); all state is in buffers.
"""

from __future__ import annotations

import torch
from torch import nn

from .._rules import binarize_weight, unpack_signs
from ..ops.native import direct
from .registry import check_features, check_finite_weight, check_input, keep_float32, register_module

_BINARY_LINEAR = direct("binary_linear")


@register_module
class BinaryLinear(nn.Module):
    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, binary_activations: bool = False
    ):
        super().__init__()
        self.in_features, self.out_features = check_features(in_features, out_features)
        self.binary_activations = bool(binary_activations)
        self.register_buffer(
            "packed_weight", torch.zeros(out_features, (in_features + 7) // 8, dtype=torch.uint8)
        )
        self.register_buffer("alpha", torch.zeros(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32) if bias else None)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        keep_float32(self, "alpha", "bias")
        return out

    @classmethod
    def from_float(cls, linear: nn.Linear, binary_activations: bool = False) -> BinaryLinear:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        check_finite_weight(linear.weight)
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, binary_activations)
        packed, alpha = binarize_weight(linear.weight)
        mod.packed_weight.copy_(packed)
        mod.alpha.copy_(alpha)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().float())
        return mod.to(linear.weight.device)

    def extra_config(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "binary_activations": self.binary_activations,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> BinaryLinear:
        return cls(cfg["in_features"], cfg["out_features"], cfg["bias"], cfg["binary_activations"])

    def dequantized_weight(self) -> torch.Tensor:
        """alpha * sign(W) as a float32 (out_features, in_features) matrix (for export and inspection)."""
        return unpack_signs(self.packed_weight, self.in_features) * self.alpha[:, None]

    def onnx_qdq(self) -> dict:
        """Export spec (pyopt/io/onnx_export.py): int8 {-1, +1} weights dequantised with scale alpha (exact)."""
        signs = unpack_signs(self.packed_weight, self.in_features, torch.int8)
        return {
            "kind": "linear",
            "weight_q": signs,
            "weight_scale": self.alpha,
            "bias": self.bias,
            "activation": "binary" if self.binary_activations else "float",
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_features)
        return _BINARY_LINEAR(
            x, self.packed_weight, self.alpha, self.bias, self.in_features, self.binary_activations
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"binary_activations={self.binary_activations}"
        )
