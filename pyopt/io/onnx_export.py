"""pyopt.export_onnx(model, example_input, path): an ONNX graph that onnxruntime's CPU provider runs fast.

How: a deep copy of the model has each pyopt layer replaced by an export twin whose forward is a
torch.autograd.Function with an ONNX `symbolic`, then torch.onnx.export(dynamo=False) traces it (the
TorchScript exporter: it is the one that lets a Function emit exactly the nodes below; the rest of the model
exports as usual). Each quantised layer becomes

  W8A8 Int8Linear (int8_kernel="ort"): integer kernels, pyopt's per-token scheme
      s = max|x| / 127 per token (1 where 0), xs = x * Reciprocal(s)       (pyopt's rounding rule, exactly)
      xq = QuantizeLinear(xs, 1, uint8 128)                               (= pyopt's int8 codes + 128)
      y = com.microsoft.MatMulIntegerToFloat(xq, W int8 (K, N), 1, w_scale, 128) * s + bias
    int8_kernel="ort-u8u8": the same with the weights stored uint8 (zero point 128)
    int8_kernel="onnx": standard operators, MatMulInteger -> Cast -> Mul -> Mul -> Add
    int8_kernel="auto" (the default): "ort" where this CPU runs it exactly, else "ort-u8u8" (below)
    int8_kernel="qdq":  QuantizeLinear -> DequantizeLinear -> MatMul (float matmuls unless the runtime fuses)
  weight-only Int8Linear, csr_int8 SparseLinear: int8 initializer -> DequantizeLinear(axis 0) -> MatMul
  Int8Conv2d: int8 weight -> DequantizeLinear -> Conv; dynamic mode adds a per-sample Q/DQ pair
  BinaryLinear: int8 {-1, +1} weights with alpha as the DequantizeLinear scale (exact); binary activations
      Where(x >= 0, 1, -1) * ReduceMean(|x|)
  Int8Embedding / Int8EmbeddingBag: Gather of the int8 rows and their scales (pyopt/io/onnx_embedding.py)
  SparseLinear (masked, dense, csr, bsr, 2:4), SparseConv2d: the plain float Linear / Conv2d they compute

The integer path computes pyopt's int8 codes exactly and sums them exactly; only the float epilogue's order
differs ((acc * w_scale) * s instead of (acc * s) * w_scale), so outputs match pyopt to float32 rounding —
on CPUs where onnxruntime's u8 x s8 kernel is exact (AVX512-VNNI, AVX-VNNI, AMX, ARM). On AVX2-only x86 CPUs
MLAS computes u8 x s8 with 16-bit pair sums (vpmaddubsw) that can saturate, as for onnxruntime's own
quantize_dynamic output (measured: 0.35 max abs error on a 144 -> 32 layer with N(0, 1) data);
"ort-u8u8" stores the weights as uint8 (zero point 128) so MLAS takes its exact u8 x u8 path there, at
about float speed. "auto" picks by the exporting machine's CPU: export on (or for) the CPU you deploy on.
Tolerances: tests/test_onnx_models.py.

Layer protocol: a pyopt module exports if it has `onnx_qdq()` returning either an nn.Module (a plain torch
module computing the same, exported as is) or a dict with keys
    kind "linear" | "conv2d" | "embedding" | "embedding_bag", weight_q (int8, (N, K) or (O, I, kh, kw)),
    weight_scale (float, N elements), bias (float tensor or None), activation "float" | "dynamic" | "binary",
    and for conv2d: stride, padding, dilation (pairs of ints); for embeddings: padding_idx, mode,
    include_last_offset.
Modules without it are read by duck typing: in_features/out_features (or in_channels/out_channels/kernel_size,
stride, padding, dilation), an int8 buffer of the float weight's shape, a float "*scale*" buffer with one
value per output channel, `bias`, and `mode` ("dynamic" -> int8 activations); anything else is an error.

Inputs and outputs: names input (input0, input1, ... for several), output (output0, ... for several);
dynamic axes by default: dim 0 ("batch") of every input and output, and dim 1 ("sequence") of every integer
input of rank >= 2 (token ids, masks), of float inputs of rank 3 (batch, sequence, features), and of every
output whose dim 1 has the example's sequence length. `dynamic_axes=` (torch's format) replaces that.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import nn

from ..nn.registry import MODULES
from .onnx_embedding import EmbeddingTwin

OPSET = 17
_INT8, _UINT8, _FLOAT = 3, 2, 1  # onnx.TensorProto
INT8_KERNELS = ("auto", "ort", "ort-u8u8", "onnx", "qdq")


def exact_u8s8_here() -> bool:
    """Whether onnxruntime's u8 x s8 integer kernel (MLAS) is exact on this CPU: VNNI / AMX dot products and
    ARM's sdot / udot accumulate in 32 bits; AVX2-only x86 sums pairs in saturating 16 bits (vpmaddubsw)."""
    import platform

    from ..timing import cpu_flags

    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    return any(f in ("avx512_vnni", "avx_vnni") or f.startswith("amx") for f in cpu_flags())


def resolve_int8_kernel(kernel: str) -> str:
    if kernel not in INT8_KERNELS:
        raise ValueError(f"int8_kernel must be one of {INT8_KERNELS}, got {kernel!r}")
    if kernel == "auto":
        return "ort" if exact_u8s8_here() else "ort-u8u8"
    return kernel


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


class _IntLinear(torch.autograd.Function):
    """W8A8 with integer kernels, pyopt's per-token scheme (module docstring)."""

    @staticmethod
    def forward(ctx, x, weight_q, weight_scale, bias, kernel):
        return _DQLinear.forward(ctx, _PerTokenQDQ.forward(ctx, x), weight_q, weight_scale, bias)

    @staticmethod
    def symbolic(g, x, weight_q, weight_scale, bias, kernel):
        n, k = weight_q.type().sizes()
        shape = g.op("Shape", x)
        x2 = g.op("Reshape", x, _const(g, [-1, k]))  # (tokens, features)
        scale = _symmetric_scale(g, x2, axes_i=[-1], keepdims_i=1)  # (tokens, 1)
        xs = g.op("Mul", x2, g.op("Reciprocal", scale))  # float32(x * float32(1 / scale)): pyopt's rule
        zp = g.op("Constant", value_t=torch.tensor(128, dtype=torch.uint8))
        xq = g.op("QuantizeLinear", xs, _const(g, 1.0), zp)  # rne(xs) + 128 in [1, 255]
        wt = g.op("Transpose", weight_q, perm_i=[1, 0])  # (K, N); constant-folded into the initializer
        w_zp = []
        if kernel == "ort-u8u8":  # uint8 weights, zero point 128: MLAS's exact u8 x u8 path on AVX2-only CPUs
            shifted = g.op(
                "Add",
                g.op("Cast", wt, to_i=6),
                g.op("Constant", value_t=torch.tensor(128, dtype=torch.int32)),
            )
            wt, w_zp = g.op("Cast", shifted, to_i=_UINT8), [zp]
        if kernel in ("ort", "ort-u8u8"):
            y = g.op("com.microsoft::MatMulIntegerToFloat", xq, wt, _const(g, 1.0), weight_scale, zp, *w_zp)
        else:
            acc = g.op("MatMulInteger", xq, wt, zp)
            y = g.op("Mul", g.op("Cast", acc, to_i=_FLOAT), weight_scale)
        y = g.op("Add", g.op("Mul", y, scale), bias)
        out_shape = g.op(
            "Concat", g.op("Slice", shape, _const(g, [0]), _const(g, [-1])), _const(g, [n]), axis_i=0
        )
        return g.op("Reshape", y, out_shape)


class _ExportLayer(nn.Module):
    """The export twin of one pyopt layer (buffers become the graph's initializers)."""

    def __init__(self, spec: dict, int8_kernel: str = "ort"):
        super().__init__()
        self.kind, self.activation, self.int8_kernel = spec["kind"], spec["activation"], int8_kernel
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
        elif self.activation == "dynamic" and self.kind == "linear" and self.int8_kernel != "qdq":
            return _IntLinear.apply(x, self.weight_q, self.weight_scale, self.bias, self.int8_kernel)
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


def _twin(module: nn.Module, int8_kernel: str) -> nn.Module:
    spec = module.onnx_qdq() if hasattr(module, "onnx_qdq") else _duck_spec(module)
    if isinstance(spec, nn.Module):  # a plain torch module computing the same (sparse layers)
        return spec.cpu().float()
    if spec["kind"] in ("embedding", "embedding_bag"):
        return EmbeddingTwin(spec)
    return _ExportLayer(spec, int8_kernel)


def _uses_ort_ops(twin: nn.Module, int8_kernel: str) -> bool:
    """Whether the graph will hold com.microsoft ops (MatMulIntegerToFloat of W8A8 linear layers)."""
    return int8_kernel in ("ort", "ort-u8u8") and any(
        isinstance(m, _ExportLayer) and m.kind == "linear" and m.activation == "dynamic"
        for m in twin.modules()
    )


def _flat(outputs) -> list:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)]


def _default_axes(inputs, outputs, in_names, out_names) -> dict:
    """Batch (dim 0) everywhere; sequence (dim 1) on token-like inputs and the outputs that carry it."""
    axes: dict[str, dict[int, str]] = {}
    seq = None
    for name, t in zip(in_names, inputs, strict=True):
        axes[name] = {0: "batch"} if t.dim() else {}
        token_like = t.dim() >= 2 and not t.is_floating_point()
        if token_like or (t.dim() == 3 and t.is_floating_point()):
            axes[name][1] = "sequence"
            seq = t.shape[1] if seq is None else seq
    for name, t in zip(out_names, outputs, strict=True):
        axes[name] = {0: "batch"} if t.dim() else {}
        if seq is not None and t.dim() >= 2 and t.shape[1] == seq:
            axes[name][1] = "sequence"
    return {k: v for k, v in axes.items() if v}


def export_onnx(
    model: nn.Module,
    example_input,
    path: str | os.PathLike,
    *,
    opset: int = OPSET,
    int8_kernel: str = "auto",
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict | None = None,
) -> None:
    """Write `model` (with pyopt layers) as an ONNX graph for onnxruntime (see the module docstring).

    example_input: a tensor or a tuple of tensors (the model's positional arguments). int8_kernel: "ort"
    (onnxruntime's MatMulIntegerToFloat, uint8 x int8), "ort-u8u8" (the same with uint8 weights: exact on
    AVX2-only CPUs too), "onnx" (standard MatMulInteger), "qdq" (Q/DQ pairs, float matmuls), or "auto": "ort"
    where this CPU runs it exactly (VNNI, AMX, ARM), else "ort-u8u8". Batch and sequence dims are dynamic by
    default (module docstring); pass dynamic_axes to choose."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("example_input must be a tensor or a tuple of tensors")
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f"opset must be an int, got {type(opset).__name__}")
    if not 13 <= opset <= 17:  # per-axis DequantizeLinear from 13; ReduceMax's axes became an input in 18
        raise ValueError(f"opset must be >= 13 (per-channel DequantizeLinear) and <= 17, got {opset}")
    int8_kernel = resolve_int8_kernel(int8_kernel)
    twin = copy.deepcopy(model).cpu().eval()
    for name, module in list(twin.named_modules()):
        if not name or MODULES.get(type(module).__name__) is not type(module):
            continue
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent), child, _twin(module, int8_kernel))
    inputs = tuple(t.cpu() for t in inputs)
    with torch.no_grad():
        outputs = _flat(twin(*inputs))
    if input_names is None:
        input_names = ["input"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]
    if output_names is None:
        output_names = ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
    if dynamic_axes is None:
        dynamic_axes = _default_axes(inputs, outputs, input_names, output_names)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        torch.onnx.export(
            twin,
            inputs,
            os.fspath(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            custom_opsets={"com.microsoft": 1} if _uses_ort_ops(twin, int8_kernel) else None,
        )
