"""pyopt.quantize(model, mode=...): swap nn.Linear / nn.Conv2d for pyopt's quantised layers, in place.

Modes:
    "dynamic"      Int8Linear / Int8Conv2d in W8A8 mode (per-token int8 activations, per-channel int8 weights)
    "weight_only"  Int8Linear / Int8Conv2d with int8 weights and float activations
    "binary"       BinaryLinear (1-bit sign weights, alpha = mean|W| per channel); Conv2d layers are kept

Pruned layers (pyopt.nn.SparseLinear): in "dynamic" and "weight_only" mode a compressed "csr" layer becomes
"csr_int8" in place (SparseLinear.quantize_int8: int8 value per kept weight, float32 scale per row). That is
weight-only int8 in both modes — there is no sparse int8 x int8 kernel — and the report row says so. Other
SparseLinear formats are skipped with the reason (masked: compress first; dense / bsr / 2:4: no int8 format).

Which layers are skipped, and why (each appears in the report with its reason):
    - excluded by `include` / `exclude` (pyopt/convert/select.py: glob patterns on qualified module names,
      e.g. "encoder.*", or module types)
    - too small: fewer than `min_weights` weights (default MIN_WEIGHTS = 128*128). Below that a layer's
      float matmul takes a few microseconds and the per-call cost of quantising activations and launching
      a custom op is the same order, so int8 cannot pay (and the memory saved is a few KB).
    - subclasses of nn.Linear / nn.Conv2d (e.g. MultiheadAttention's out_proj, whose parent reads
      .weight directly), which a swap would break
    - convolutions the int8 layer does not support (groups != 1: depthwise / grouped), and every Conv2d in
      "binary" mode (BinaryLinear is linear only)

Embeddings: nn.Embedding / nn.EmbeddingBag become Int8Embedding / Int8EmbeddingBag (int8 rows, one float32
scale per row; a lookup dequantises only the rows it reads) in "dynamic" and "weight_only" mode — weight-only
int8 in both, a lookup has no activations to quantise. Tables with max_norm stay float (torch renormalises
the float table on every lookup).

Pruned layers the format choice stored dense (SparseLinear "dense", SparseConv2d) are quantised like the
float layers they came from: their zeros quantise to exact int8 zeros, so the pruning survives.

Every other module holding float parameters or buffers (LayerNorm, BatchNorm, Conv1d, MultiheadAttention's
own projection weights, ...) appears in the report as "kept float", with the reason, and its bytes are
summed in summary["float_bytes"]. A call that converts no layer at all warns (UserWarning) with each
layer's reason.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..nn import (
    BinaryLinear,
    Int8Conv2d,
    Int8Embedding,
    Int8EmbeddingBag,
    Int8Linear,
    SparseConv2d,
    SparseLinear,
)
from ..nn.registry import MODULES
from .report import Report
from .select import Selector

MODES = ("dynamic", "weight_only", "binary")
MIN_WEIGHTS = 128 * 128


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


_EMBEDDINGS = {nn.Embedding: Int8Embedding, nn.EmbeddingBag: Int8EmbeddingBag}


def _convert(name: str, module: nn.Module, mode: str, min_weights: int) -> tuple[nn.Module | None, str]:
    """(new module, "") or (None, reason it is skipped)."""
    if type(module) not in (nn.Linear, nn.Conv2d, *_EMBEDDINGS):
        return (
            None,
            f"subclass {type(module).__name__} of {type(module).__mro__[1].__name__}: its parent may use .weight",
        )
    if type(module) in _EMBEDDINGS and mode == "binary":
        return None, "binary mode converts nn.Linear only (embeddings become int8 in the int8 modes)"
    if isinstance(module, nn.Conv2d) and mode == "binary":
        return None, "binary mode converts nn.Linear only"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return None, f"groups={module.groups} (depthwise/grouped conv) is not supported by Int8Conv2d"
    if module.weight.numel() < min_weights:
        return (
            None,
            f"too small for quantisation to pay ({module.weight.numel()} < min_weights={min_weights} weights)",
        )
    try:
        if type(module) in _EMBEDDINGS:
            return _EMBEDDINGS[type(module)].from_float(module), ""
        if isinstance(module, nn.Linear):
            if mode == "binary":
                return BinaryLinear.from_float(module), ""
            return Int8Linear.from_float(module, mode=mode), ""
        return Int8Conv2d.from_float(module, mode=mode), ""
    except ValueError as e:  # a configuration the int8 layer rejects (documented there)
        return None, str(e)


@torch.no_grad()
def _as_float_layer(module: nn.Module) -> nn.Module:
    """A pruned layer stored dense (SparseLinear "dense" / SparseConv2d) as the plain float layer it computes:
    its weight is zero where pruned (the zeros are the mask), so quantising it keeps the pruning."""
    if isinstance(module, SparseLinear):
        w = module.weight
        lin = nn.Linear(module.in_features, module.out_features, module.bias is not None, w.device, w.dtype)
        lin.weight.copy_(w)
        if module.bias is not None:
            lin.bias.copy_(module.bias)
        return lin
    w = torch.where(module.mask, module.weight, 0) if module.mask is not None else module.weight
    conv = nn.Conv2d(
        module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
        module.dilation, module.groups, module.bias is not None, module.padding_mode, w.device, w.dtype,
    )  # fmt: skip
    conv.weight.copy_(w)
    if module.bias is not None:
        conv.bias.copy_(module.bias)
    return conv


def _quantize_sparse(module, mode: str, min_weights: int) -> tuple[str, str]:
    """Quantise a SparseLinear in place: ("quantized", note) or ("skipped", reason)."""
    if mode == "binary":
        return "skipped", "binary mode converts nn.Linear only (SparseLinear has no binary format)"
    if module.format == "dense":  # handled by _convert on the equivalent nn.Linear (see quantize)
        raise AssertionError("dense SparseLinear layers are quantised as nn.Linear")
    if module.format != "csr":
        why = {
            "csr_int8": "already csr_int8 (int8)",
            "masked": "masked (training) layer: compress it to csr first (pyopt.sparsify(format='csr'))",
        }.get(
            module.format,
            f"format {module.format!r} (the dispatcher's choice) has no int8 variant: only 'csr' -> 'csr_int8'"
            " and 'dense' -> Int8Linear are converted",
        )
        return "skipped", why
    if module.in_features * module.out_features < min_weights:
        n = module.in_features * module.out_features
        return "skipped", f"too small for quantisation to pay ({n} < min_weights={min_weights} weights)"
    module.quantize_int8()
    return "quantized", "csr -> csr_int8: weight-only int8 (activations stay float, whatever the mode)"


def quantize(
    model: nn.Module,
    mode: str = "dynamic",
    include=None,
    exclude=None,
    *,
    min_weights: int = MIN_WEIGHTS,
) -> tuple[nn.Module, Report]:
    """Replace the model's nn.Linear / nn.Conv2d / nn.Embedding / nn.EmbeddingBag (and pruned layers stored
    dense) by quantised pyopt layers, in place.

    include / exclude: glob patterns on qualified module names or module types, or lists of them
    (pyopt/convert/select.py); a layer is converted when include selects it (all layers if include is
    None) and exclude does not.
    Compressed "csr" SparseLinear layers become "csr_int8" (weight-only int8, in every int8 mode); "dense"
    SparseLinear / SparseConv2d layers become Int8Linear / Int8Conv2d (BinaryLinear in binary mode).
    Returns (model, report): one report row per candidate layer with action "quantized" or "skipped" (the
    mode, the new type, its bytes before/after and, for skipped layers, the reason), plus a "kept float"
    row with the reason for every other module that holds float weights. Warns when nothing was converted.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(min_weights, bool) or not isinstance(min_weights, int) or min_weights < 0:
        raise ValueError(f"min_weights must be an int >= 0, got {min_weights!r}")
    selected = Selector(include, exclude)

    if isinstance(model, (nn.Linear, nn.Conv2d, nn.Embedding, nn.EmbeddingBag)):
        raise ValueError("model must contain the layers to quantise (wrap a single layer in nn.Sequential)")
    report = Report(f"pyopt.quantize(mode={mode!r})")
    kinds = (nn.Linear, nn.Conv2d, nn.Embedding, nn.EmbeddingBag, SparseLinear, SparseConv2d)
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    before = after = 0
    for name, module in targets:
        row = {"type": type(module).__name__, "mode": mode}
        if not selected(name, module):
            report.add(name, "skipped", **row, reason="excluded by include/exclude")
            continue
        if isinstance(module, SparseLinear) and module.format != "dense":  # converted in place, not swapped
            b0 = _nbytes(module)
            action, note = _quantize_sparse(module, mode, min_weights)
            if action == "skipped":
                report.add(name, "skipped", **row, reason=note)
                continue
            b1 = _nbytes(module)
            before, after = before + b0, after + b1
            to = "SparseLinear(csr_int8)"
            report.add(name, "quantized", **row, to=to, bytes_before=b0, bytes_after=b1, reason=note)
            continue
        pruned = isinstance(module, (SparseLinear, SparseConv2d))
        new, reason = _convert(name, _as_float_layer(module) if pruned else module, mode, min_weights)
        if new is None:
            report.add(name, "skipped", **row, reason=reason)
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        b0, b1 = _nbytes(module), _nbytes(new)
        before, after = before + b0, after + b1
        note = {}
        if pruned:
            note["reason"] = "pruned layer stored dense: quantised dense (its pruned weights are int8 zeros)"
        elif isinstance(new, (Int8Embedding, Int8EmbeddingBag)):
            note["reason"] = "int8 rows + a float32 scale per row (a lookup is weight-only in every mode)"
        report.add(name, "quantized", **row, to=type(new).__name__, bytes_before=b0, bytes_after=b1, **note)
    float_bytes = _report_float_layers(model, report, {name for name, _ in targets})
    report.summary = {
        "quantized": sum(r["action"] == "quantized" for r in report),
        "skipped": sum(r["action"] == "skipped" for r in report),
        "kept_float": sum(r["action"] == "kept float" for r in report),
        "bytes_before": before,
        "bytes_after": after,
        "float_bytes": float_bytes,
    }
    if report.summary["quantized"] == 0:
        why = "; ".join(f"{r['layer']}: {r['reason']}" for r in report if r["action"] == "skipped")
        warnings.warn(
            f"pyopt.quantize(mode={mode!r}) converted no layer ({why or 'no Linear/Conv2d/Embedding layer'})",
            UserWarning,
            stacklevel=2,
        )
    return model, report


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)


def _float_reason(module: nn.Module) -> str:
    if isinstance(module, _NORMS) or "Norm" in type(module).__name__:
        return "normalisation layer: kept in float (a few parameters per channel; no int8 form)"
    if isinstance(module, nn.MultiheadAttention):
        return "MultiheadAttention reads its in_proj weights itself: kept in float"
    return (
        f"no int8 layer for {type(module).__name__} (pyopt quantises Linear, Conv2d, Embedding, "
        "EmbeddingBag and pruned layers)"
    )


def _report_float_layers(model: nn.Module, report: Report, seen: set[str]) -> int:
    """A "kept float" row for every module (not a candidate, not a pyopt layer) that holds float tensors of
    its own; returns their bytes."""
    total = 0
    for name, module in model.named_modules():
        if name in seen or MODULES.get(type(module).__name__) is type(module):
            continue
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        nbytes = sum(t.numel() * t.element_size() for t in own if t.is_floating_point())
        if nbytes:
            total += nbytes
            report.add(
                name, "kept float", type=type(module).__name__, bytes=nbytes, reason=_float_reason(module)
            )
    return total
