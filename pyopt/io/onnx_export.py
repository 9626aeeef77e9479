"""pyopt.export_onnx(model, example_input, path): a QDQ ONNX graph that onnxruntime's CPU provider runs.

How: a deep copy of the model has each pyopt layer replaced by an export twin whose forward is a
torch.autograd.Function with an ONNX `symbolic`, then torch.onnx.export(dynamo=False) traces it (the
TorchScript exporter: it is the one that lets a Function emit exactly the QDQ nodes below; the rest of the
model exports as usual). Each quantised layer becomes

    weights: int8 initializer -> DequantizeLinear(per-channel scale, axis 0) -> MatMul / Conv (+ Add bias)
    dynamic (W8A8) activations, per token (last dim):  scale = max|x| / 127 (0 -> 1);
        QuantizeLinear(x, scale, int8 0, axis 0) -> DequantizeLinear  (x viewed as (tokens, features))
    dynamic conv activations, per sample:  scale = max|x[n]| / 127 per batch element, same Q/DQ pair
    binary activations: Where(x >= 0, 1, -1) * ReduceMean(|x|) (BinaryLinear(binary_activations=True))

BinaryLinear exports exactly as int8 {-1, +1} weights with its alpha as the DequantizeLinear scale.
onnxruntime may fuse the DQ -> MatMul pairs into its own integer kernels (graph optimisation level
"extended"), which quantises activations itself; its outputs then differ from pyopt by int8 rounding.

Layer protocol: a pyopt module exports if it has `onnx_qdq() -> dict` with keys
    kind "linear" | "conv2d", weight_q (int8, (N, K) or (O, I, kh, kw)), weight_scale (float, N elements),
    bias (float tensor or None), activation "float" | "dynamic" | "binary",
    and for conv2d: stride, padding, dilation (pairs of ints).
Modules without it are read by duck typing: in_features/out_features (or in_channels/out_channels/kernel_size,
stride, padding, dilation), an int8 buffer of the float weight's shape, a float "*scale*" buffer with one
value per output channel, `bias`, and `mode` ("dynamic" -> int8 activations); anything else is an error.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import nn

from ..nn.registry import MODULES

OPSET = 17
_INT8 = 3  # onnx.TensorProto.INT8


def _const(g, value):
    return g.op("Constant", value_t=torch.as_tensor(value))


def _qdq(g, x2, scale, axis: int):
    """QuantizeLinear -> DequantizeLinear of x2 with a symmetric int8 scale per index of `axis`."""
    zp = g.op("Cast", g.op("Mul", scale, _const(g, 0.0)), to_i=_INT8)
    return g.op(
        "DequantizeLinear", g.op("QuantizeLinear", x2, scale, zp, axis_i=axis), scale, zp, axis_i=axis
    )


def _symmetric_scale(g, x, **reduce_kw):
    amax = g.op("ReduceMax", g.op("Abs", x), **reduce_kw)
    scale = g.op("Div", amax, _const(g, 127.0))
    return g.op("Where", g.op("Equal", scale, _const(g, 0.0)), _const(g, 1.0), scale)


def _torch_scale(amax: torch.Tensor) -> torch.Tensor:
    scale = amax / 127.0
    return torch.where(scale == 0, torch.ones_like(scale), scale)


class _PerTokenQDQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        scale = _torch_scale(x.abs().amax(-1, keepdim=True))
        return torch.clamp(torch.round(x / scale), -127, 127) * scale

    @staticmethod
    def symbolic(g, x):
        shape = g.op("Shape", x)
        features = g.op("Slice", shape, _const(g, [-1]), _const(g, [2**63 - 1]))
        x2 = g.op("Reshape", x, g.op("Concat", _const(g, [-1]), features, axis_i=0))  # (tokens, features)
        scale = g.op("Reshape", _symmetric_scale(g, x2, axes_i=[-1], keepdims_i=1), _const(g, [-1]))
        return g.op("Reshape", _qdq(g, x2, scale, axis=0), shape)


class _PerSampleQDQ(torch.autograd.Function):
    """Per-sample symmetric int8 fake quantisation (conv activations: one scale per batch element)."""

    @staticmethod
    def forward(ctx, x):
        scale = _torch_scale(x.abs().amax(dim=tuple(range(1, x.dim())), keepdim=True))
        return torch.clamp(torch.round(x / scale), -127, 127) * scale

    @staticmethod
    def symbolic(g, x):
        x2 = g.op("Reshape", x, _const(g, [0, -1]))  # (batch, everything else); 0 copies the batch dim
        scale = g.op("Reshape", _symmetric_scale(g, x2, axes_i=[-1], keepdims_i=1), _const(g, [-1]))
        return g.op("Reshape", _qdq(g, x2, scale, axis=0), g.op("Shape", x))


def _dq_weight(g, weight_q, weight_scale):
    channels = weight_q.type().sizes()[0]
    zp = g.op("Constant", value_t=torch.zeros(channels, dtype=torch.int8))
    return g.op("DequantizeLinear", weight_q, weight_scale, zp, axis_i=0)


def _float_weight(weight_q, weight_scale):
    shape = (-1,) + (1,) * (weight_q.dim() - 1)
    return weight_q.float() * weight_scale.reshape(shape)


class _DQLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight_q, weight_scale, bias):
        return nn.functional.linear(x, _float_weight(weight_q, weight_scale), bias)

    @staticmethod
    def symbolic(g, x, weight_q, weight_scale, bias):
        w = g.op("Transpose", _dq_weight(g, weight_q, weight_scale), perm_i=[1, 0])
        return g.op("Add", g.op("MatMul", x, w), bias)


class _DQConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight_q, weight_scale, bias, stride, padding, dilation):
        return nn.functional.conv2d(x, _float_weight(weight_q, weight_scale), bias, stride, padding, dilation)

    @staticmethod
    def symbolic(g, x, weight_q, weight_scale, bias, stride, padding, dilation):
        kh, kw = weight_q.type().sizes()[2:]
        return g.op(
            "Conv",
            x,
            _dq_weight(g, weight_q, weight_scale),
            bias,
            kernel_shape_i=[kh, kw],
            strides_i=list(stride),
            pads_i=[padding[0], padding[1], padding[0], padding[1]],
            dilations_i=list(dilation),
            group_i=1,
        )


class _ExportLayer(nn.Module):
    """The export twin of one pyopt layer (buffers become the graph's initializers)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.kind, self.activation = spec["kind"], spec["activation"]
        wq = spec["weight_q"].detach().cpu().to(torch.int8).contiguous()
        self.register_buffer("weight_q", wq)
        self.register_buffer(
            "weight_scale", spec["weight_scale"].detach().cpu().float().reshape(-1).contiguous()
        )
        bias = spec.get("bias")
        self.register_buffer(
            "bias", torch.zeros(wq.shape[0]) if bias is None else bias.detach().cpu().float()
        )
        self.conv = tuple(
            tuple(int(v) for v in _pair(spec.get(k, 1 if k != "padding" else 0)))
            for k in ("stride", "padding", "dilation")
        )

    def forward(self, x):
        x = x.float()
        if self.activation == "binary":
            x = torch.where(x >= 0, 1.0, -1.0) * x.abs().mean(-1, keepdim=True)
        elif self.activation == "dynamic":
            x = (_PerTokenQDQ if self.kind == "linear" else _PerSampleQDQ).apply(x)
        if self.kind == "linear":
            return _DQLinear.apply(x, self.weight_q, self.weight_scale, self.bias)
        return _DQConv2d.apply(x, self.weight_q, self.weight_scale, self.bias, *self.conv)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _duck_spec(module: nn.Module) -> dict:
    """Read a quantised layer's tensors by convention (see the module docstring); strict about shapes."""
    name = type(module).__name__
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        kind, shape = "linear", (module.out_features, module.in_features)
    elif hasattr(module, "in_channels") and hasattr(module, "kernel_size"):
        kind = "conv2d"
        shape = (module.out_channels, module.in_channels, *_pair(module.kernel_size))
    else:
        raise TypeError(
            f"pyopt.export_onnx: {name} defines no onnx_qdq() and is neither linear nor conv-like"
        )
    buffers = dict(module.named_buffers(recurse=False))
    weight_q = next((b for b in buffers.values() if b.dtype == torch.int8 and tuple(b.shape) == shape), None)
    scale = next(
        (b for n, b in buffers.items() if "scale" in n and b.is_floating_point() and b.numel() == shape[0]),
        None,
    )
    if weight_q is None or scale is None:
        raise TypeError(
            f"pyopt.export_onnx: {name} defines no onnx_qdq() and has no int8 weight buffer of shape {shape} "
            f"with a per-channel float '*scale*' buffer"
        )
    spec = {
        "kind": kind,
        "weight_q": weight_q,
        "weight_scale": scale,
        "bias": getattr(module, "bias", None),
        "activation": "dynamic" if getattr(module, "mode", "weight_only") == "dynamic" else "float",
    }
    if kind == "conv2d":
        if getattr(module, "groups", 1) != 1:
            raise ValueError(f"pyopt.export_onnx: {name}: only groups=1 convolutions are exported")
        for key in ("stride", "padding", "dilation"):
            spec[key] = getattr(module, key, 0 if key == "padding" else 1)
        if isinstance(spec["padding"], str):
            raise ValueError(
                f"pyopt.export_onnx: {name}: padding={spec['padding']!r} is not supported; use ints"
            )
    return spec


def export_onnx(model: nn.Module, example_input, path: str | os.PathLike, *, opset: int = OPSET) -> None:
    """Write `model` (with pyopt quantised layers) as a QDQ ONNX graph; the first input dim is dynamic."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("example_input must be a tensor or a tuple of tensors")
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if opset < 13:  # per-axis (per-channel) DequantizeLinear and dynamic Slice inputs arrived in opset 13
        raise ValueError(f"opset must be >= 13 (per-channel DequantizeLinear), got {opset}")
    twin = copy.deepcopy(model).cpu().eval()
    for name, module in list(twin.named_modules()):
        if not name or MODULES.get(type(module).__name__) is not type(module):
            continue
        spec = module.onnx_qdq() if hasattr(module, "onnx_qdq") else _duck_spec(module)
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent), child, _ExportLayer(spec))
    names = [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    axes = {n: {0: "batch"} for n in names} | {"output": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(
            twin,
            tuple(t.cpu() for t in inputs),
            os.fspath(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["output"],
            dynamic_axes=axes,
        )
