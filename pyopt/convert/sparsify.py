"""pyopt.sparsify(model): compress every pruned layer to its inference format, with a report."""

from __future__ import annotations

from torch import nn

from ..nn import SparseLinear
from ..nn.sparse_format import DispatchCache
from .report import Report


def sparsify(model: nn.Module, format: str | None = None, cache: DispatchCache | None = None):
    """compress() every SparseLinear (and every other module with a compress() method, e.g. a masked
    Conv2d) in `model`, in place. Returns (model, Report) with the format, reason and memory per layer."""
    report = Report("pyopt.sparsify")
    dense_total = own_total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, SparseLinear):
            if mod.format == "masked":
                mod.compress(format=format, cache=cache)
            dense, own = mod.memory_bytes()
            dense_total, own_total = dense_total + dense, own_total + own
            report.add(
                name, "compressed", format=mod.format, sparsity=getattr(mod, "sparsity", float("nan")),
                dense_bytes=dense, bytes=own, saving=1 - own / max(dense, 1), reason=mod.reason,
            )  # fmt: skip
        elif callable(getattr(mod, "compress", None)) and mod is not model:
            mod.compress()
            report.add(
                name, "compressed", format=getattr(mod, "format", ""), reason=getattr(mod, "reason", "")
            )
    report.summary = {
        "dense_bytes": dense_total,
        "bytes": own_total,
        "memory_saving": 1 - own_total / max(dense_total, 1),
    }
    return model, report
