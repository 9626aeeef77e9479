"""Argument checks of the `pyopt::` ops (pyopt/ops/schemas.py declares the ops and their fakes and uses these).

`check_<op>` functions validate metadata only (shapes, dtypes, scalar arguments): the fakes run them (so
torch.compile reports bad input at trace time) and so do the reference and Triton kernels; the C++ kernels run
the same conditions with the same messages (csrc/op_checks.h). They raise ValueError/TypeError naming the
argument. `check_qparams_values` is the one data-dependent check (a scales tensor with a zero, a zero point out
of range): the kernels run it, the fakes cannot.
"""

from __future__ import annotations

import math

import torch

from .._rules import FLOAT_DTYPES, QRANGE, QUANT_DTYPES, SGD_DTYPES, SPARSE_DTYPES


def check_float_input(name: str, x: torch.Tensor, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {tuple(str(d) for d in dtypes)}, got {x.dtype}")


def check_quant_dtype(name: str, dtype) -> None:
    if dtype not in QUANT_DTYPES:
        raise TypeError(f"{name} must be torch.int8 or torch.uint8, got {dtype}")


def check_scale(name: str, scale: float) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{name} must be finite and > 0, got {scale}")


def check_zero_point(name: str, zero_point: int, dtype) -> None:
    lo, hi = QRANGE[dtype]
    if not lo <= zero_point <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}] for {dtype}, got {zero_point}")


def check_axis(name: str, axis: int, ndim: int) -> int:
    if not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-d tensor, got {axis}")
    return axis % max(ndim, 1)


def check_quant_input(name: str, x) -> None:
    if isinstance(x, torch.Tensor) and (x.is_complex() or not x.is_floating_point()):
        raise TypeError(f"{name} must be a float32/float16/bfloat16 tensor, got {x.dtype}")
    check_float_input(name, x)


def check_float_out_dtype(name: str, dtype) -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be one of {tuple(str(d) for d in FLOAT_DTYPES)}, got {dtype}")


def check_scalar_scale(name: str, scale: float) -> None:
    check_scale(name, scale)
    # The kernels use float32(scale) (as torch does); it must stay a positive, finite float32.
    if not 0.0 < float(torch.tensor(scale, dtype=torch.float32)) < math.inf:
        raise ValueError(f"{name} must be representable as a positive finite float32, got {scale}")


def check_q_input(name: str, q) -> None:
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(q).__name__}")
    if q.dtype not in QUANT_DTYPES:
        raise TypeError(f"{name} must have dtype torch.int8 or torch.uint8, got {q.dtype}")


def check_qparams_meta(x, scales, zero_points, shape: tuple[int, ...], what: str) -> None:
    """scales: float32/float64 of `shape`; zero_points: an integer tensor of `shape`, on x's device."""
    for name, t in (("scales", scales), ("zero_points", zero_points)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} ({what}), got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but the input is on {x.device}")
    if scales.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"scales must be float32 or float64, got {scales.dtype}")
    if (
        scales.is_complex()
        or zero_points.is_floating_point()
        or zero_points.is_complex()
        or zero_points.dtype == torch.bool
    ):
        raise TypeError(f"zero_points must be an integer tensor, got {zero_points.dtype}")


def check_qparams_values(scales: torch.Tensor, zero_points: torch.Tensor, dtype) -> None:
    """Data-dependent checks (one device sync on GPU): every scale finite and > 0 in float32, zps in range.

    One min/max reduction per tensor (aminmax propagates NaN, which then fails `min > 0`).
    """
    if scales.numel() == 0:
        return
    s32 = scales.to(torch.float32)
    s_min, s_max = torch.aminmax(s32)
    if not (s_min.item() > 0 and s_max.item() < math.inf):
        bad = scales[~(torch.isfinite(s32) & (s32 > 0))][0].item()
        raise ValueError(f"scales must all be finite and > 0 (as float32), got {bad}")
    lo, hi = QRANGE[dtype]
    z_min, z_max = torch.aminmax(zero_points)
    if not (z_min.item() >= lo and z_max.item() <= hi):
        bad = zero_points[(zero_points < lo) | (zero_points > hi)][0].item()
        raise ValueError(f"zero_points must be in [{lo}, {hi}] for {dtype}, got {bad}")


def check_group_size(x, group_size: int) -> int:
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension for per-group quantization")
    if x.shape[-1] % group_size != 0:
        raise ValueError(f"group_size ({group_size}) must divide the last dim of x ({x.shape[-1]})")
    return x.shape[-1] // group_size


def check_quantize_per_tensor(x, scale, zero_point, dtype):
    check_quant_input("x", x)
    check_scalar_scale("scale", scale)
    check_quant_dtype("dtype", dtype)
    check_zero_point("zero_point", zero_point, dtype)


def check_quantize_per_channel_meta(x, scales, zero_points, axis, dtype):
    check_quant_input("x", x)
    check_quant_dtype("dtype", dtype)
    ax = check_axis("axis", axis, x.dim())
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dimension for per-channel quantization")
    check_qparams_meta(x, scales, zero_points, (x.shape[ax],), f"x.shape[axis={axis}]")


def check_quantize_per_channel(x, scales, zero_points, axis, dtype):
    check_quantize_per_channel_meta(x, scales, zero_points, axis, dtype)
    check_qparams_values(scales, zero_points, dtype)


def check_quantize_per_token(x, dtype):
    check_quant_input("x", x)
    if dtype != torch.int8:
        raise TypeError(f"dtype must be torch.int8 (per-token quantization is symmetric), got {dtype}")
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension for per-token quantization")


def check_quantize_per_group(x, group_size, dtype, symmetric):
    check_quant_input("x", x)
    check_quant_dtype("dtype", dtype)
    check_group_size(x, group_size)


def check_dequantize_per_tensor(q, scale, zero_point, out_dtype):
    check_q_input("q", q)
    check_scalar_scale("scale", scale)
    check_zero_point("zero_point", zero_point, q.dtype)
    check_float_out_dtype("out_dtype", out_dtype)


def check_dequantize_per_channel_meta(q, scales, zero_points, axis, out_dtype):
    check_q_input("q", q)
    check_float_out_dtype("out_dtype", out_dtype)
    if q.dim() == 0:
        raise ValueError("q must have at least 1 dimension for per-channel dequantization")
    ax = check_axis("axis", axis, q.dim())
    check_qparams_meta(q, scales, zero_points, (q.shape[ax],), f"q.shape[axis={axis}]")


def check_dequantize_per_channel(q, scales, zero_points, axis, out_dtype):
    check_dequantize_per_channel_meta(q, scales, zero_points, axis, out_dtype)
    check_qparams_values(scales, zero_points, q.dtype)


def check_dequantize_per_group_meta(q, scales, zero_points, group_size, out_dtype):
    check_q_input("q", q)
    check_float_out_dtype("out_dtype", out_dtype)
    groups = check_group_size(q, group_size)
    check_qparams_meta(q, scales, zero_points, (*q.shape[:-1], groups), "q.shape[:-1] + (groups,)")


def check_dequantize_per_group(q, scales, zero_points, group_size, out_dtype):
    check_dequantize_per_group_meta(q, scales, zero_points, group_size, out_dtype)
    check_qparams_values(scales, zero_points, q.dtype)


def _check_int8_weights(w_q, w_scales, bias, w_ndim: int) -> None:
    if not isinstance(w_q, torch.Tensor) or w_q.dtype != torch.int8:
        raise TypeError(f"w_q must be an int8 tensor, got {getattr(w_q, 'dtype', type(w_q).__name__)}")
    if w_q.dim() != w_ndim:
        raise ValueError(f"w_q must be {w_ndim}-d, got shape {tuple(w_q.shape)}")
    if not isinstance(w_scales, torch.Tensor) or w_scales.dtype != torch.float32:
        raise TypeError(
            f"w_scales must be a float32 tensor, got {getattr(w_scales, 'dtype', type(w_scales))}"
        )
    if w_scales.shape != (w_q.shape[0],):
        raise ValueError(f"w_scales must have shape ({w_q.shape[0]},), got {tuple(w_scales.shape)}")
    if bias is not None:
        check_float_input("bias", bias)
        if bias.shape != (w_q.shape[0],):
            raise ValueError(f"bias must have shape ({w_q.shape[0]},), got {tuple(bias.shape)}")


def check_int8_linear(x, w_q, w_scales, bias):
    check_float_input("x", x)
    _check_int8_weights(w_q, w_scales, bias, 2)
    if x.dim() < 1 or x.shape[-1] != w_q.shape[1]:
        raise ValueError(f"x: last dim must equal in_features={w_q.shape[1]}, got shape {tuple(x.shape)}")


def conv_out_hw(x, w_q, stride, padding, dilation) -> tuple[int, int]:
    return tuple(
        (x.shape[2 + i] + 2 * padding[i] - dilation[i] * (w_q.shape[2 + i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    )


def check_int8_conv2d(x, w_q, w_scales, bias, stride, padding, dilation):
    check_float_input("x", x)
    _check_int8_weights(w_q, w_scales, bias, 4)
    if x.dim() != 4 or x.shape[1] != w_q.shape[1]:
        raise ValueError(
            f"x must be [B, {w_q.shape[1]}, H, W] (in_channels={w_q.shape[1]}), got {tuple(x.shape)}"
        )
    for name, v, lo in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        if len(v) != 2 or any(int(e) < lo for e in v):
            raise ValueError(f"{name} must be 2 ints >= {lo}, got {list(v)}")
    if min(conv_out_hw(x, w_q, stride, padding, dilation)) < 1:
        raise ValueError(f"x spatial size {tuple(x.shape[2:])} is smaller than the (dilated) kernel")


def check_binary_linear(x, packed_weight, alpha, bias, in_features, binary_activations=False):
    check_float_input("x", x)
    if in_features < 0:
        raise ValueError(f"in_features must be >= 0, got {in_features}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x must have last dimension in_features={in_features}, got shape {tuple(x.shape)}")
    if not isinstance(packed_weight, torch.Tensor) or packed_weight.dtype != torch.uint8:
        raise TypeError("packed_weight must be a torch.uint8 tensor")
    if packed_weight.dim() != 2 or packed_weight.shape[1] != (in_features + 7) // 8:
        raise ValueError(
            f"packed_weight must have shape (out_features, ceil(in_features/8)={(in_features + 7) // 8}), "
            f"got {tuple(packed_weight.shape)}"
        )
    n = packed_weight.shape[0]
    if not isinstance(alpha, torch.Tensor) or alpha.dtype != torch.float32 or alpha.shape != (n,):
        raise ValueError(f"alpha must be a float32 tensor of shape ({n},)")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (n,)):
        raise ValueError(f"bias must be None or a float32 tensor of shape ({n},)")


def _check_tensor(name: str, t, dtypes=None, ndim=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {tuple(str(d) for d in dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def _check_same_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")


def _check_bias(bias, n: int, x: torch.Tensor) -> None:
    if bias is not None:
        _check_tensor("bias", bias, ndim=1)
        _check_same_dtype("bias", bias, "x", x)
        if bias.shape[0] != n:
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")


def check_sparse_mask(mask, weight_shape) -> None:
    _check_tensor("mask", mask, (torch.bool,))
    if tuple(mask.shape) != tuple(weight_shape):
        raise ValueError(f"mask must have the weight's shape {tuple(weight_shape)}, got {tuple(mask.shape)}")


def _check_input_features(name: str, x: torch.Tensor, k: int, what: str) -> None:
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"{name} must have shape [..., {k}] ({what}), got {tuple(x.shape)}")


def check_sparse_masked_linear(x, weight, mask, bias):
    _check_tensor("x", x, SPARSE_DTYPES)
    _check_tensor("weight", weight, SPARSE_DTYPES, ndim=2)
    _check_same_dtype("weight", weight, "x", x)
    _check_input_features("x", x, weight.shape[1], "weight.shape[1]")
    check_sparse_mask(mask, weight.shape)
    _check_bias(bias, weight.shape[0], x)


def check_sparse_masked_linear_grad_input(grad_y, weight, mask):
    _check_tensor("grad_y", grad_y, SPARSE_DTYPES)
    _check_tensor("weight", weight, SPARSE_DTYPES, ndim=2)
    _check_same_dtype("weight", weight, "grad_y", grad_y)
    _check_input_features("grad_y", grad_y, weight.shape[0], "weight.shape[0]")
    check_sparse_mask(mask, weight.shape)


def check_sparse_masked_sddmm(grad_y, x, mask):
    _check_tensor("grad_y", grad_y, SPARSE_DTYPES)
    _check_tensor("x", x, SPARSE_DTYPES)
    _check_same_dtype("x", x, "grad_y", grad_y)
    if grad_y.dim() < 1 or x.dim() < 1 or grad_y.shape[:-1] != x.shape[:-1]:
        raise ValueError(
            f"grad_y and x must agree on their leading dims, got {tuple(grad_y.shape)} and {tuple(x.shape)}"
        )
    check_sparse_mask(mask, (grad_y.shape[-1], x.shape[-1]))


def _check_compressed(
    x, crow_indices, col_indices, values, bias, out_features, rows, col_dtypes, values_ndim, float_values=True
):
    _check_tensor("x", x, SPARSE_DTYPES)
    if not isinstance(out_features, int) or out_features < 0:
        raise ValueError(f"out_features must be an int >= 0, got {out_features!r}")
    _check_tensor("crow_indices", crow_indices, (torch.int64,), ndim=1)
    _check_tensor("col_indices", col_indices, col_dtypes, ndim=1)
    _check_tensor("values", values, ndim=values_ndim)
    if float_values:  # (csr_int8's values are int8, checked by its own check)
        _check_same_dtype("values", values, "x", x)
    if crow_indices.shape[0] != rows + 1:
        raise ValueError(f"crow_indices must have {rows + 1} entries, got {crow_indices.shape[0]}")
    if col_indices.shape[0] != values.shape[0]:
        raise ValueError(
            f"col_indices ({col_indices.shape[0]}) and values ({values.shape[0]}) must have one entry per nonzero"
        )
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dim")
    _check_bias(bias, out_features, x)


def check_sparse_csr_linear(x, crow_indices, col_indices, values, bias, out_features):
    _check_compressed(
        x, crow_indices, col_indices, values, bias, out_features, out_features, (torch.int16, torch.int32), 1
    )


def check_sparse_csr_int8_linear(x, crow_indices, col_indices, values, row_scales, bias, out_features):
    # weight-only int8 CSR: x float (any of SPARSE_DTYPES), values int8, one float32 scale per output row
    _check_tensor("x", x, SPARSE_DTYPES)
    _check_tensor("values", values, (torch.int8,), ndim=1)
    _check_tensor("row_scales", row_scales, (torch.float32,), ndim=1)
    if isinstance(out_features, int) and row_scales.shape[0] != out_features:
        raise ValueError(
            f"row_scales must have out_features={out_features} entries, got {row_scales.shape[0]}"
        )
    _check_compressed(
        x, crow_indices, col_indices, values, None, out_features, out_features, (torch.int16, torch.int32), 1,
        float_values=False,
    )  # fmt: skip
    # bias: any float dtype (as the int8 linear ops), so the layer's float32 bias serves fp16 / bf16 x too
    if bias is not None:
        _check_tensor("bias", bias, SPARSE_DTYPES, ndim=1)
        if bias.shape[0] != out_features:
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")


def check_sparse_bsr_linear(x, crow_indices, col_indices, values, bias, out_features):
    _check_tensor("values", values, ndim=3)
    bh, bw = values.shape[1], values.shape[2]
    if bh == 0 or bw == 0 or out_features % bh or (x.dim() >= 1 and x.shape[-1] % bw):
        raise ValueError(
            f"block shape ({bh}, {bw}) must divide the weight shape ({out_features}, {x.shape[-1]})"
        )
    _check_compressed(
        x, crow_indices, col_indices, values, bias, out_features, out_features // bh, (torch.int32,), 3
    )


def check_fused_sgd_lists(params, grads, momentum_buffers, master_params, masks, first_step, lr, lr_tensor):
    """O(1) checks run by the router on every step (per-tensor checks: check_fused_sgd_tensors / C++)."""
    n = len(params)
    if len(grads) != n:
        raise ValueError(f"grads must have one tensor per param ({n}), got {len(grads)}")
    for name, lst in (("momentum_buffers", momentum_buffers), ("master_params", master_params)):
        if len(lst) not in (0, n):
            raise ValueError(f"{name} must be empty or have one tensor per param ({n}), got {len(lst)}")
    if len(masks) not in (0, n):
        raise ValueError(f"masks must be empty or have one entry per param ({n}), got {len(masks)}")
    if len(first_step) != (n if momentum_buffers else 0):
        raise ValueError(f"first_step must have one flag per momentum buffer, got {len(first_step)}")
    if lr < 0 or not math.isfinite(lr):
        raise ValueError(f"Invalid learning rate: {lr}")
    if lr_tensor is not None and lr_tensor.numel() != 1:
        raise ValueError("lr_tensor must be 1-element")


def check_fused_sgd_tensors(params, grads, momentum_buffers, master_params, masks):
    """Per-tensor metadata checks."""
    device = params[0].device if params else None
    for i, p in enumerate(params):
        check_float_input(f"params[{i}]", p, SGD_DTYPES)
        g = grads[i]
        for name, lst in (
            ("params", params),
            ("grads", grads),
            ("momentum_buffers", momentum_buffers),
            ("master_params", master_params),
        ):
            if lst and lst[i].device != device:
                raise ValueError(f"{name}[{i}] is on {lst[i].device} but params[0] is on {device}")
        if masks and masks[i] is not None and masks[i].device != device:
            raise ValueError(f"masks[{i}] is on {masks[i].device} but params[0] is on {device}")
        if g.is_sparse:
            raise RuntimeError(f"grads[{i}]: FusedSGD does not support sparse gradients")
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(
                f"grads[{i}] must match params[{i}] ({p.dtype}, {tuple(p.shape)}), got {g.dtype}"
            )
        if master_params:
            m = master_params[i]
            if (
                p.dtype not in (torch.float16, torch.bfloat16)
                or m.dtype != torch.float32
                or m.shape != p.shape
            ):
                raise ValueError(f"master_params[{i}] must be a float32 copy of a bf16/fp16 params[{i}]")
        if momentum_buffers:
            b = momentum_buffers[i]
            want = torch.float32 if master_params else p.dtype
            if b.shape != p.shape or b.dtype != want:
                raise ValueError(f"momentum_buffers[{i}] must be {want} with shape {tuple(p.shape)}")
        if masks and masks[i] is not None and (masks[i].dtype != torch.bool or masks[i].shape != p.shape):
            raise ValueError(f"masks[{i}] must be a bool tensor of shape {tuple(p.shape)}")


def check_fused_sgd(
    params, grads, bufs, masters, masks, first_step, lr, wd, mom, damp, nesterov, maximize, lr_t, gs, fi
):
    check_fused_sgd_lists(params, grads, bufs, masters, masks, first_step, lr, lr_t)
    check_fused_sgd_tensors(params, grads, bufs, masters, masks)


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two strided tensors may share memory (same storage, overlapping byte extents)."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device or a.device.type == "meta":
        return False
    pa, pb = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
    if pa != pb or pa == 0:  # (fake tensors have no memory: data_ptr 0)
        return False

    def extent(t):
        lo = t.storage_offset() * t.element_size()
        span = sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
        return lo, lo + (span + 1) * t.element_size()

    (a0, a1), (b0, b1) = extent(a), extent(b)
    return a0 < b1 and b0 < a1


def with_out(check):
    """The checks of a dequantize `.out` overload: the op's own (out_dtype = out.dtype), then out itself."""

    def check_out(q, *params, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        check(q, *params, out.dtype)
        if out.shape != q.shape:
            raise ValueError(f"out must have q's shape {tuple(q.shape)}, got {tuple(out.shape)}")
        if out.device != q.device:
            raise ValueError(f"out must be on q's device ({q.device}), got {out.device}")
        if _overlaps(out, q):
            raise ValueError("out must not overlap q (it is read while out is written)")

    return check_out


# ----------------------------------------------------------------------------------------------------------
# int8 embeddings
# ----------------------------------------------------------------------------------------------------------
INDEX_DTYPES = (torch.int32, torch.int64)
BAG_MODES = ("sum", "mean", "max")


def _embedding_tensor(name: str, t, dtypes=None, ndim=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {tuple(str(d) for d in dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def _check_table(indices, weight_q, row_scales, out_dtype) -> None:
    _embedding_tensor("indices", indices, INDEX_DTYPES)
    _embedding_tensor("weight_q", weight_q, (torch.int8,), ndim=2)
    _embedding_tensor("row_scales", row_scales, (torch.float32,), ndim=1)
    if row_scales.shape[0] != weight_q.shape[0]:
        raise ValueError(
            f"row_scales must have one entry per row of weight_q ({weight_q.shape[0]}), got {row_scales.shape[0]}"
        )
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be one of {tuple(str(d) for d in FLOAT_DTYPES)}, got {out_dtype}")
    for name, t in (("weight_q", weight_q), ("row_scales", row_scales)):
        if t.device != indices.device:
            raise ValueError(f"{name} is on {t.device} but indices is on {indices.device}")


def _check_index_values(name: str, indices: torch.Tensor, num: int) -> None:
    """Data-dependent: every index in [0, num) (torch raises IndexError; a kernel must never read outside)."""
    if indices.numel() == 0:
        return
    lo, hi = torch.aminmax(indices)
    if lo.item() < 0 or hi.item() >= num:
        bad = lo.item() if lo.item() < 0 else hi.item()
        raise ValueError(f"{name} must be in [0, {num}) (the table's rows), got {bad}")


def check_embedding_int8_meta(indices, weight_q, row_scales, out_dtype) -> None:
    _check_table(indices, weight_q, row_scales, out_dtype)


def check_embedding_int8(indices, weight_q, row_scales, out_dtype) -> None:
    _check_table(indices, weight_q, row_scales, out_dtype)
    _check_index_values("indices", indices, weight_q.shape[0])


def check_embedding_bag_int8_meta(
    indices,
    offsets,
    weight_q,
    row_scales,
    per_sample_weights,
    mode,
    include_last_offset,
    padding_idx,
    out_dtype,
) -> None:
    _check_table(indices, weight_q, row_scales, out_dtype)
    _embedding_tensor("indices", indices, ndim=1)
    _embedding_tensor("offsets", offsets, INDEX_DTYPES, ndim=1)
    if offsets.device != indices.device:
        raise ValueError(f"offsets is on {offsets.device} but indices is on {indices.device}")
    if mode not in BAG_MODES:
        raise ValueError(f"mode must be one of {BAG_MODES}, got {mode!r}")
    if include_last_offset and offsets.shape[0] == 0:
        raise ValueError("offsets must hold at least one entry when include_last_offset=True")
    if padding_idx is not None and not -weight_q.shape[0] <= padding_idx < max(weight_q.shape[0], 1):
        raise ValueError(
            f"padding_idx must be in [{-weight_q.shape[0]}, {weight_q.shape[0]}), got {padding_idx}"
        )
    if per_sample_weights is not None:
        _embedding_tensor("per_sample_weights", per_sample_weights, FLOAT_DTYPES)
        if mode != "sum":
            raise ValueError(f"per_sample_weights is only supported for mode='sum', got mode={mode!r}")
        if per_sample_weights.shape != indices.shape:
            raise ValueError(
                f"per_sample_weights must have the shape of indices {tuple(indices.shape)}, "
                f"got {tuple(per_sample_weights.shape)}"
            )
        if per_sample_weights.device != indices.device:
            raise ValueError(
                f"per_sample_weights is on {per_sample_weights.device}, indices on {indices.device}"
            )


def check_embedding_bag_int8(
    indices,
    offsets,
    weight_q,
    row_scales,
    per_sample_weights,
    mode,
    include_last_offset,
    padding_idx,
    out_dtype,
) -> None:
    check_embedding_bag_int8_meta(
        indices, offsets, weight_q, row_scales, per_sample_weights, mode, include_last_offset, padding_idx,
        out_dtype,
    )  # fmt: skip
    _check_index_values("indices", indices, weight_q.shape[0])
    if offsets.numel():
        if offsets[0].item() != 0:
            raise ValueError(f"offsets[0] must be 0, got {offsets[0].item()}")
        if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
            raise ValueError("offsets must be non-decreasing")
        if offsets[-1].item() > indices.shape[0]:
            raise ValueError(
                f"offsets must be <= len(indices) = {indices.shape[0]}, got {offsets[-1].item()}"
            )
        if include_last_offset and offsets[-1].item() != indices.shape[0]:
            raise ValueError(
                f"with include_last_offset=True the last offset must be len(indices) = {indices.shape[0]}, "
                f"got {offsets[-1].item()}"
            )
