"""SparseConv1d / 2d / 3d: a ConvNd whose weight (and optionally bias) is multiplied by a fixed bool mask —
what pyopt.prune makes of nn.Conv1d / nn.Conv2d / nn.Conv3d.

Training: forward is F.convNd with `where(mask, weight, 0)`, so grad_W is exactly zero where the mask is False
and the pruned weights stay exactly zero under any optimizer whose update of a zero-gradient zero weight is zero
(SGD with/without momentum and weight decay, Adam, pyopt.optim.FusedSGD which also reads the mask).
No `weight_orig` copy: `weight` holds the pruned weights themselves (zeros where pruned), the mask is a bool
buffer, registered with `set_param_mask` so FusedSGD keeps the masked entries zero inside its fused pass.
A pruned bias (pyopt.prune(..., name="bias")) works the same way with the buffer `bias_mask`.

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


def check_mask(mask, shape, what: str = "weight") -> None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != {what} shape {tuple(shape)}")


class MaskedBias:
    """The optional bias mask every masked layer shares (buffer `bias_mask`, None while the bias is dense)."""

    def set_bias_mask(self, mask: torch.Tensor) -> None:
        """Prune the bias: zero it where `mask` is False (in place) and keep it zero in training."""
        if self.bias is None:
            raise ValueError(f"{type(self).__name__} has no bias to prune")
        check_mask(mask, self.bias.shape, "bias")
        if self.bias_mask is None:
            self.bias_mask = mask.clone()
        else:
            self.bias_mask.copy_(mask)
        with torch.no_grad():
            self.bias.masked_fill_(~self.bias_mask, 0)
        set_param_mask(self.bias, self.bias_mask)

    def _masked_bias(self):
        if self.bias is None or self.bias_mask is None:
            return self.bias
        if get_param_mask(self.bias) is not self.bias_mask:
            set_param_mask(self.bias, self.bias_mask)
        return torch.where(self.bias_mask, self.bias, 0)


def _rebuild_mask(layer, incompatible_keys) -> None:
    """load_state_dict post-hook of a compressed layer: its mask is where the loaded weight is nonzero."""
    with torch.no_grad():
        layer.mask.copy_(layer.weight != 0)
    set_param_mask(layer.weight, layer.mask)


def _sync_masks(module: nn.Module, *_) -> None:
    """Re-attach the mask buffers to their parameters (after .to(), load_state_dict, unpickling)."""
    set_param_mask(module.weight, module.mask)
    if module.bias is not None and module.bias_mask is not None:
        set_param_mask(module.bias, module.bias_mask)


class _SparseConvNd(MaskedBias, nn.Module):
    _dense: type[nn.Module]  # the torch layer this one replaces (nn.Conv1d / 2d / 3d)
    _conv = None  # F.conv1d / 2d / 3d

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
        bias_mask: bool = False,
    ):
        super().__init__()
        # the torch layer on the meta device validates the arguments and works out the padding of non-"zeros"
        # padding modes exactly as it does (incl. padding="same"), without allocating anything.
        spec = self._dense(
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
        has_bias_mask = bias and bias_mask
        self.register_buffer(
            "bias_mask", torch.ones(out_channels, dtype=torch.bool, device=device) if has_bias_mask else None
        )
        self.compressed = False
        _sync_masks(self)
        self.register_load_state_dict_post_hook(_sync_masks)  # a module-level function: picklable

    @classmethod
    def from_dense(cls, conv: nn.Module, mask: torch.Tensor):
        """Wrap `conv` with a bool `mask` (same shape as conv.weight; True = keep).

        The new layer reuses conv's weight and bias Parameter objects (an optimizer built on the dense model
        keeps working) and zeroes their pruned entries in place.
        """
        if type(conv) is not cls._dense:
            raise TypeError(f"conv must be an nn.{cls._dense.__name__}, got {type(conv).__name__}")
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
        layer.train(conv.training)
        return layer

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (in place, so FusedSGD's reference stays valid) and zero the pruned weights."""
        check_mask(mask, self.weight.shape)
        self.mask.copy_(mask)
        with torch.no_grad():
            self.weight.masked_fill_(~self.mask, 0)
        set_param_mask(self.weight, self.mask)

    def to_dense(self) -> nn.Module:
        """The plain torch layer holding the same Parameter objects (pruned entries exactly zero), no mask."""
        self.compress()
        dense = self._dense(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.bias is not None, self.padding_mode, device="meta",
        )  # fmt: skip
        dense.weight, dense.bias = self.weight, self.bias
        set_param_mask(self.weight, None)
        if self.bias is not None:
            set_param_mask(self.bias, None)
        return dense.train(self.training)

    def compress(self):
        """Switch to inference: dense fallback on the (zero where pruned) weight; see the module docstring.

        The weight's zeros are now the mask, so the mask is no longer saved (a non-persistent buffer: files of
        compressed layers are no larger than the dense layer's); loading rebuilds it as weight != 0."""
        if self.compressed:
            return self
        with torch.no_grad():
            self.weight.masked_fill_(~self.mask, 0)
            if self.bias is not None and self.bias_mask is not None:
                self.bias.masked_fill_(~self.bias_mask, 0)
        self._mask_from_weight_on_load()
        return self

    def onnx_qdq(self) -> nn.Module:
        """Export spec (pyopt/io/onnx_export.py): the plain torch conv this layer computes (zeros where pruned)."""
        dense = self._dense(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, self.bias is not None, self.padding_mode, self.weight.device, self.weight.dtype,
        )  # fmt: skip
        with torch.no_grad():
            dense.weight.copy_(torch.where(self.mask, self.weight, 0))
            if self.bias is not None:
                dense.bias.copy_(self._masked_bias())
        return dense

    def _mask_from_weight_on_load(self) -> None:
        self.compressed = True
        mask = self._buffers.pop("mask")
        self.register_buffer("mask", mask, persistent=False)
        self.register_load_state_dict_post_hook(_rebuild_mask)

    def _apply(self, fn, recurse=True):
        # .to()/.cuda() replace the mask buffers by new tensors: re-attach them to the parameters.
        out = super()._apply(fn, recurse)
        _sync_masks(self)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if get_param_mask(self.weight) is not self.mask:  # e.g. after deepcopy
            set_param_mask(self.weight, self.mask)
        # torch.where's backward masks grad_W: d/dW where(M, W, 0) = M.
        weight = self.weight if self.compressed else torch.where(self.mask, self.weight, 0)
        bias = self.bias if self.compressed else self._masked_bias()
        conv = type(self)._conv
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

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
            "bias_mask": self.bias_mask is not None,
        }

    @classmethod
    def from_config(cls, cfg: dict):
        cfg = dict(cfg)
        dtype = getattr(torch, cfg.pop("dtype", "float32"))
        compressed = cfg.pop("compressed", False)
        for key in ("kernel_size", "stride", "dilation"):
            cfg[key] = tuple(cfg[key])
        if not isinstance(cfg["padding"], str):
            cfg["padding"] = tuple(cfg["padding"])
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


@register_module
class SparseConv1d(_SparseConvNd):
    _dense, _conv = nn.Conv1d, staticmethod(F.conv1d)


@register_module
class SparseConv2d(_SparseConvNd):
    _dense, _conv = nn.Conv2d, staticmethod(F.conv2d)


@register_module
class SparseConv3d(_SparseConvNd):
    _dense, _conv = nn.Conv3d, staticmethod(F.conv3d)
