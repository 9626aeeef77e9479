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
"""

from __future__ import annotations

from torch import nn

from ..nn import BinaryLinear, Int8Conv2d, Int8Linear, SparseLinear
from .report import Report
from .select import Selector

MODES = ("dynamic", "weight_only", "binary")
MIN_WEIGHTS = 128 * 128


def _nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _convert(name: str, module: nn.Module, mode: str, min_weights: int) -> tuple[nn.Module | None, str]:
    """(new module, "") or (None, reason it is skipped)."""
    if type(module) not in (nn.Linear, nn.Conv2d):
        return (
            None,
            f"subclass {type(module).__name__} of {type(module).__mro__[1].__name__}: its parent may use .weight",
        )
    if isinstance(module, nn.Conv2d) and mode == "binary":
        return None, "binary mode converts nn.Linear only"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return None, f"groups={module.groups} (depthwise/grouped conv) is not supported by Int8Conv2d"
    if module.weight.numel() < min_weights:
        return (
            None,
            f"too small for quantisation to pay ({module.weight.numel()} < min_weights={min_weights} weights)",
        )
    if isinstance(module, nn.Linear):
        if mode == "binary":
            return BinaryLinear.from_float(module), ""
        return Int8Linear.from_float(module, mode=mode), ""
    try:
        return Int8Conv2d.from_float(module, mode=mode), ""
    except ValueError as e:  # a conv configuration Int8Conv2d rejects (documented there)
        return None, str(e)


def _quantize_sparse(module, mode: str, min_weights: int) -> tuple[str, str]:
    """Quantise a SparseLinear in place: ("quantized", note) or ("skipped", reason)."""
    if mode == "binary":
        return "skipped", "binary mode converts nn.Linear only (SparseLinear has no binary format)"
    if module.format != "csr":
        why = {
            "csr_int8": "already csr_int8 (int8)",
            "masked": "masked (training) layer: compress it to csr first (pyopt.sparsify(format='csr'))",
        }.get(
            module.format,
            f"format {module.format!r} (the dispatcher's choice) is not converted: only 'csr' -> 'csr_int8'"
            " (layer.quantize_int8() forces it from a dense-stored layer)",
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
    """Replace the model's nn.Linear (and nn.Conv2d, int8 modes) by quantised pyopt layers, in place.

    include / exclude: glob patterns on qualified module names or module types, or lists of them
    (pyopt/convert/select.py); a layer is converted when include selects it (all layers if include is
    None) and exclude does not.
    Compressed "csr" SparseLinear layers become "csr_int8" (weight-only int8, in every int8 mode).
    Returns (model, report): one report row per Linear/Conv2d/SparseLinear with action "quantized" or "skipped", the
    mode, the new type, its bytes before/after and, for skipped layers, the reason.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(min_weights, bool) or not isinstance(min_weights, int) or min_weights < 0:
        raise ValueError(f"min_weights must be an int >= 0, got {min_weights!r}")
    selected = Selector(include, exclude)

    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise ValueError("model must contain the layers to quantise (wrap a single layer in nn.Sequential)")
    report = Report(f"pyopt.quantize(mode={mode!r})")
    kinds = (nn.Linear, nn.Conv2d, SparseLinear)
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]
    before = after = 0
    for name, module in targets:
        row = {"type": type(module).__name__, "mode": mode}
        if not selected(name, module):
            report.add(name, "skipped", **row, reason="excluded by include/exclude")
            continue
        if isinstance(module, SparseLinear):  # converted in place, not swapped
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
        new, reason = _convert(name, module, mode, min_weights)
        if new is None:
            report.add(name, "skipped", **row, reason=reason)
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        b0, b1 = _nbytes(module), _nbytes(new)
        before, after = before + b0, after + b1
        report.add(name, "quantized", **row, to=type(new).__name__, bytes_before=b0, bytes_after=b1)
    report.summary = {
        "quantized": sum(r["action"] == "quantized" for r in report),
        "skipped": sum(r["action"] == "skipped" for r in report),
        "bytes_before": before,
        "bytes_after": after,
    }
    return model, report
