"""pyopt.sparsify(model): compress every pruned layer to its inference format, with a report."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nn import SparseLinear
from ..nn.sparse_format import DispatchCache, calibration_ms
from .report import Report


@torch.no_grad()
def _rows_seen(model: nn.Module, example_inputs) -> dict[str, int]:
    """{SparseLinear name: rows M of x it receives} in one forward of `example_inputs` (a tensor, a tuple of
    positional arguments or a dict of keyword arguments)."""
    seen: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, SparseLinear):

            def hook(_mod, args, name=name):
                x = args[0]
                seen[name] = max(seen.get(name, 0), math.prod(x.shape[:-1]) if x.dim() else 1)

            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        if isinstance(example_inputs, dict):
            model(**example_inputs)
        elif isinstance(example_inputs, tuple):
            model(*example_inputs)
        else:
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def sparsify(
    model: nn.Module,
    format: str | None = None,
    cache: DispatchCache | None = None,
    *,
    expected_m=None,
    example_inputs=None,
):
    """compress() every SparseLinear (and every other module with a compress() method, e.g. a masked
    Conv2d) in `model`, in place. Returns (model, Report) with the format, reason and memory per layer.

    The format choice (format=None) times each format at a few batch sizes; tell it the ones you run:
    `expected_m` — rows per call of each layer (an int or a list: 1 for decoding, batch * tokens for a
    transformer) — or `example_inputs` (what you pass to model(...): a tensor, a tuple, or a dict of keyword
    arguments), from which one forward pass records the rows each layer sees. Without either it calibrates
    at sparse_format.CALIBRATION_M."""
    if expected_m is not None and example_inputs is not None:
        raise ValueError("give expected_m or example_inputs, not both")
    default_ms = calibration_ms(expected_m) if expected_m is not None else None
    per_layer = _rows_seen(model, example_inputs) if example_inputs is not None else {}
    report = Report("pyopt.sparsify")
    dense_total = own_total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, SparseLinear):
            if mod.format == "masked":
                ms = per_layer.get(name, default_ms)
                mod.compress(format=format, cache=cache, expected_m=ms)
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
