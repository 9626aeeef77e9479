"""pyopt.prune / pyopt.prune_masks: pick the layers, compute their masks, swap in the sparse layers, report."""

from __future__ import annotations

import torch
from torch import nn

from ..convert.report import Report
from ..nn import SparseConv2d, SparseLinear
from . import masks as M
from .channel import prune_channels
from .select import layer_kind, select_layers


def _current_mask(name: str, layer: nn.Module) -> torch.Tensor:
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(
            f"layer '{name}' ({type(layer).__name__}) has no dense weight (compressed?): prune it "
            "before pyopt.sparsify"
        )
    mask = getattr(layer, "mask", None)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == weight.shape:
        return mask
    return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)


def _check_args(amount, method, scope, pattern, generator):
    pat = M.parse_pattern(pattern)
    M.check_choice("method", method, M.METHODS)
    M.check_choice("scope", scope, M.SCOPES)
    M.check_generator(generator)
    if pat.kind == "nm":
        implied = 1 - pat.n / pat.m
        if amount is not None and not (isinstance(amount, float) and abs(amount - implied) < 1e-9):
            raise ValueError(
                f"amount={amount!r}: pattern='{pat}' fixes the sparsity at {implied:g}; pass "
                f"amount=None or {implied:g}"
            )
        if scope != "layer":
            raise ValueError(
                f"scope={scope!r}: pattern='{pat}' is defined per group of {pat.m}, use scope='layer'"
            )
    else:
        amount = M.check_amount(amount)
    return amount, pat


def prune_masks(
    model: nn.Module,
    amount,
    method="magnitude",
    scope="layer",
    pattern="unstructured",
    include=None,
    exclude=None,
    generator=None,
) -> dict[str, torch.Tensor]:
    """The masks pyopt.prune would apply, {qualified layer name: bool mask (True = keep)}; changes nothing.

    Each mask already includes the layer's current mask (for SparseLinear / SparseConv2d layers).
    """
    amount, pat = _check_args(amount, method, scope, pattern, generator)
    if pat.kind == "channel":
        raise ValueError("pattern='channel' removes channels instead of masking them: use pyopt.prune")
    layers = select_layers(model, include, exclude)
    return dict(
        zip([n for n, _ in layers], _layer_masks(layers, amount, method, scope, pat, generator), strict=True)
    )


def _layer_masks(layers, amount, method, scope, pat, generator) -> list[torch.Tensor]:
    names = [n for n, _ in layers]
    # masks first: _current_mask names a layer without a dense weight (compressed) instead of an AttributeError
    current = [_current_mask(n, layer) for n, layer in layers]
    weights = [layer.weight for _, layer in layers]
    with torch.no_grad():
        return M.compute_masks(names, weights, current, amount, method, scope, pat, generator)


def _set_module(model: nn.Module, qualname: str, new: nn.Module) -> nn.Module:
    if qualname == "":
        return new
    parent, _, attr = qualname.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
    return model


def _apply_mask(name: str, layer: nn.Module, mask: torch.Tensor) -> nn.Module:
    """Swap a dense layer for its sparse twin, or update a sparse layer's mask; returns the layer to keep."""
    if type(layer) is nn.Conv2d:
        return SparseConv2d.from_dense(layer, mask)
    if hasattr(layer, "set_mask"):  # SparseConv2d (and SparseLinear if it offers it): in place
        layer.set_mask(mask)
        return layer
    dense = layer
    if type(layer) is not nn.Linear:  # an already-pruned SparseLinear: rebuild it around the same tensors
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        dense.weight, dense.bias = layer.weight, layer.bias
    return SparseLinear.from_dense(dense, mask)


def prune(
    model: nn.Module,
    amount,
    method="magnitude",
    scope="layer",
    pattern="unstructured",
    include=None,
    exclude=None,
    generator=None,
    channel_norm=1,
):
    """Prune the weights of model's nn.Linear / nn.Conv2d layers; returns (model, Report).

    amount:  float in [0, 1] = target fraction of each layer's weights (scope="layer") or of all selected
             weights together (scope="global") that are zero afterwards, counting already-pruned ones; int =
             count of weights (blocks for a block pattern, channels for "channel"). round() as torch does.
             None or 1 - N/M for an N:M pattern (the pattern fixes it).
    method:  "magnitude" (smallest |w|, block L2 norm, channel L1/L2 norm) or "random" (draws from `generator`).
    scope:   "layer" or "global" (rank across every selected layer; not for N:M or "channel").
    pattern: "unstructured"; "N:M" such as "2:4", "1:4", "4:8" (keep the N largest |w| of every M consecutive
             weights along the input dim, for conv the flattened in_channels/groups*kh*kw dim); (bh, bw) blocks
             of the (out, in) weight matrix; "channel" (physically remove output channels: see
             pyopt.pruning.channel.prune_channels; channel_norm picks L1 or L2 for it).
    include / exclude: see pyopt/convert/select.py.

    Dense layers are replaced (nn.Linear -> pyopt.nn.SparseLinear.from_dense, nn.Conv2d ->
    pyopt.nn.SparseConv2d.from_dense); already-pruned layers get the intersection of old and new mask, so
    calling prune again with a larger amount prunes gradually. The model is changed in place and returned
    (the returned object differs only when the model itself is a single layer).
    """
    amount, pat = _check_args(amount, method, scope, pattern, generator)
    if pat.kind == "channel":
        if scope != "layer":
            raise ValueError(
                f"scope={scope!r}: pattern='channel' prunes each layer's channels, use scope='layer'"
            )
        return prune_channels(model, amount, method, include, exclude, generator, channel_norm)
    layers = select_layers(model, include, exclude)
    new_masks = _layer_masks(layers, amount, method, scope, pat, generator)
    report = Report("prune")
    kept = total = 0
    for (name, old), mask in zip(layers, new_masks, strict=True):
        model = _set_module(model, name, _apply_mask(name, old, mask))
        nnz, numel = int(mask.sum()), mask.numel()
        kept, total = kept + nnz, total + numel
        report.add(
            name,
            "pruned",
            type="Linear" if layer_kind(old) == "linear" else "Conv2d",
            pattern=str(pat),
            method=method,
            params=numel,
            nonzero=nnz,
            sparsity=1 - nnz / max(numel, 1),
        )
    report.summary = {
        "layers": len(layers),
        "params": total,
        "nonzero": kept,
        "sparsity": 1 - kept / total if total else 0.0,
    }
    return model, report
