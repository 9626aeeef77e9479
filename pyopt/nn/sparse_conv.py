"""SparseConv2d: a Conv2d whose weight is multiplied by a fixed bool mask (what pyopt.prune makes of nn.Conv2d).

Training: forward is F.conv2d with `where(mask, weight, 0)`, so grad_W is exactly zero where the mask is False
and the pruned weights stay exactly zero under any optimizer whose update of a zero-gradient zero weight is zero
(SGD with/without momentum and weight decay, Adam, pyopt.optim.FusedSGD which also reads the mask).
No `weight_orig` copy: `weight` holds the pruned weights themselves (zeros where pruned), the mask is a bool
buffer, registered with `set_param_mask` so FusedSGD keeps the masked entries zero inside its fused pass.

Inference (`compress()`): pyopt has no sparse convolution kernel, so "compressed" is the dense fallback: the
weight (already zero where pruned) is used directly, without the per-call masking. This is what a dispatcher
would pick anyway for convolutions (mkldnn's dense conv beats an im2col + sparse matmul at the sparsities
pruning gives); the mask is kept so the layer can be saved, reloaded and re-pruned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._rules import get_param_mask, set_param_mask
from .registry import register_module


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _rebuild_mask(layer, incompatible_keys) -> None:
    """load_state_dict post-hook of a compressed layer: its mask is where the loaded weight is nonzero."""
    with torch.no_grad():
        layer.mask.copy_(layer.weight != 0)


@register_module
class SparseConv2d(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ):
        super().__init__()
        # nn.Conv2d on the meta device validates the arguments and works out the padding of non-"zeros"
        # padding modes exactly as nn.Conv2d does (incl. padding="same"), without allocating anything.
        spec = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            "meta",
        )
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, attr, getattr(spec, attr))
        self.padding_mode = padding_mode
        self._reversed_padding_repeated_twice = spec._reversed_padding_repeated_twice
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(spec.weight.shape, **kw))
        self.register_parameter("bias", nn.Parameter(torch.empty(out_channels, **kw)) if bias else None)
        self.register_buffer("mask", torch.ones(spec.weight.shape, dtype=torch.bool, device=device))
        self.compressed = False
        set_param_mask(self.weight, self.mask)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, mask: torch.Tensor) -> SparseConv2d:
        """Wrap `conv` with a bool `mask` (same shape as conv.weight; True = keep).

        The new layer reuses conv's weight and bias Parameter objects (an optimizer built on the dense model
        keeps working) and zeroes their pruned entries in place.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device="meta",
        )
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.mask = torch.ones(conv.weight.shape, dtype=torch.bool, device=conv.weight.device)
        layer.set_mask(mask)
        return layer

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (in place, so FusedSGD's reference stays valid) and zero the pruned weights."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(self.weight.shape)}")
        self.mask.copy_(mask)
        with torch.no_grad():
            self.weight.masked_fill_(~self.mask, 0)
        set_param_mask(self.weight, self.mask)

    def compress(self) -> SparseConv2d:
        """Switch to inference: dense fallback on the (zero where pruned) weight; see the module docstring.

        The weight's zeros are now the mask, so the mask is no longer saved (a non-persistent buffer: files
        of compressed layers are no larger than the dense layer's); loading rebuilds it as weight != 0."""
        if self.compressed:
            return self
        with torch.no_grad():
            self.weight.masked_fill_(~self.mask, 0)
        self._mask_from_weight_on_load()
        return self

    def _mask_from_weight_on_load(self) -> None:
        self.compressed = True
        mask = self._buffers.pop("mask")
        self.register_buffer("mask", mask, persistent=False)
        self.register_load_state_dict_post_hook(_rebuild_mask)

    def _apply(self, fn, recurse=True):
        # .to()/.cuda() replace the mask buffer by a new tensor: re-attach it to the weight.
        out = super()._apply(fn, recurse)
        set_param_mask(self.weight, self.mask)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if get_param_mask(self.weight) is not self.mask:  # e.g. after load_state_dict or deepcopy
            set_param_mask(self.weight, self.mask)
        # torch.where's backward masks grad_W: d/dW where(M, W, 0) = M.
        weight = self.weight if self.compressed else torch.where(self.mask, self.weight, 0)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def onnx_qdq(self) -> nn.Conv2d:
        """Export spec (pyopt/io/onnx_export.py): the plain nn.Conv2d this layer computes (zeros where pruned)."""
        w = torch.where(self.mask, self.weight, 0).detach()
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.bias is not None, self.padding_mode, w.device, w.dtype,
        )  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(w)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    @property
    def sparsity(self) -> float:
        return 1.0 - self.mask.sum().item() / max(self.mask.numel(), 1)

    def extra_config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": self.bias is not None,
            "padding_mode": self.padding_mode,
            "dtype": str(self.weight.dtype).removeprefix("torch."),
            "compressed": self.compressed,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> SparseConv2d:
        cfg = dict(cfg)
        dtype = getattr(torch, cfg.pop("dtype", "float32"))
        compressed = cfg.pop("compressed", False)
        for key in ("kernel_size", "stride", "dilation"):
            cfg[key] = _pair(cfg[key])
        if not isinstance(cfg["padding"], str):
            cfg["padding"] = _pair(cfg["padding"])
        layer = cls(**cfg, dtype=dtype)
        if compressed:
            layer._mask_from_weight_on_load()
        return layer

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, "
            f"sparsity={self.sparsity:.3f}, compressed={self.compressed}"
        )
