"""The protocol every pyopt module follows, shared by save/load, quantize, prune and ONNX export.

Module registry (for pyopt.save / pyopt.load):
    @register_module
    class Int8Linear(nn.Module):
        def extra_config(self) -> dict: ...           # JSON-able constructor arguments (shapes, mode, ...)
        @classmethod
        def from_config(cls, cfg: dict) -> "Int8Linear": ...  # an empty module of the right shapes
    All tensor state lives in parameters/buffers, so state_dict + from_config round-trips exactly.

Also the constructor / forward argument checks the modules share. Parameter masks (pruning, FusedSGD) are
a rule of pyopt/_rules.py (set_param_mask / get_param_mask).
"""

from __future__ import annotations

import operator

import torch
from torch import nn

MODULES: dict[str, type[nn.Module]] = {}


def register_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make `cls` known to pyopt.load by its class name."""
    if not (hasattr(cls, "extra_config") and hasattr(cls, "from_config")):
        raise TypeError(f"{cls.__name__} must define extra_config() and from_config(cfg) to be registered")
    MODULES[cls.__name__] = cls
    return cls


def keep_float32(module: nn.Module, *names: str) -> None:
    """After Module._apply: buffers holding quantisation metadata (scales, an int8 layer's bias) stay float32
    under .half() / .to(dtype) — the ops compute in float32 and require it; only their device follows."""
    for name in names:
        t = module._buffers.get(name)
        if t is not None and t.is_floating_point() and t.dtype != torch.float32:
            module._buffers[name] = t.float()


def check_features(in_features, out_features) -> tuple[int, int]:
    """Constructor sizes: non-negative integers (anything operator.index takes, bools and floats refused)."""
    out = []
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        try:
            if isinstance(v, bool):
                raise TypeError
            n = operator.index(v)
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
        out.append(n)
    return out[0], out[1]


def check_input(x, in_features: int) -> None:
    """forward's x: a tensor whose last dimension is in_features (the compressed sparse kernels read only the
    columns their indices name, so a wider x would otherwise give a silently wrong result)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"x must have last dimension in_features={in_features}, got shape {tuple(x.shape)}")


def check_finite_weight(weight: torch.Tensor) -> None:
    """from_float: a NaN / inf weight would make its row's scale NaN / inf and every output of it NaN."""
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(
            "the layer's weight holds NaN or inf: it cannot be quantised (fix the float model first)"
        )
