"""pyopt.prune / pyopt.prune_masks: pick the layers, compute their masks, swap in the sparse layers, report."""

from __future__ import annotations

import torch
from torch import nn

from ..convert.report import Report
from ..nn import SparseLinear
from . import masks as M
from .channel import prune_channels
from .select import layer_kind, select_layers, sparse_twins

PARAM_NAMES = ("weight", "bias")


def _current_mask(name: str, layer: nn.Module, pname: str = "weight") -> torch.Tensor:
    param = getattr(layer, pname, None)
    if not isinstance(param, torch.Tensor):
        raise ValueError(
            f"layer '{name}' ({type(layer).__name__}) has no dense weight (compressed?): prune it "
            "before pyopt.sparsify"
        )
    mask = getattr(layer, "mask" if pname == "weight" else "bias_mask", None)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == param.shape:
        return mask
    return torch.ones(param.shape, dtype=torch.bool, device=param.device)


def _check_args(amount, method, scope, pattern, generator, name="weight"):
    pat = M.parse_pattern(pattern)
    M.check_choice("method", method, M.METHODS)
    M.check_choice("scope", scope, M.SCOPES)
    M.check_generator(generator)
    M.check_choice("name", name, PARAM_NAMES)
    if name == "bias" and pat.kind != "unstructured":
        raise ValueError(f"pattern='{pat}': a bias is a vector, prune it with pattern='unstructured'")
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
    name="weight",
    importance_scores=None,
) -> dict[str, torch.Tensor]:
    """The masks pyopt.prune would apply, {qualified layer name: bool mask (True = keep)}; changes nothing.

    Each mask already includes the layer's current mask (for already-pruned layers).
    """
    amount, pat = _check_args(amount, method, scope, pattern, generator, name)
    if pat.kind == "channel":
        raise ValueError("pattern='channel' removes channels instead of masking them: use pyopt.prune")
    layers = _layers_with(select_layers(model, include, exclude), name)
    masks = _layer_masks(layers, amount, method, scope, pat, generator, name, importance_scores)
    return dict(zip([n for n, _ in layers], masks, strict=True))


def _layers_with(layers, pname: str):
    """The selected layers that hold parameter `pname` (a bias may be absent: those layers are skipped)."""
    if pname == "weight":
        return layers
    kept = [(n, m) for n, m in layers if getattr(m, pname, None) is not None]
    if layers and not kept:
        raise ValueError(f"name={pname!r}: none of the selected layers has a {pname}")
    return kept


def _layer_masks(
    layers, amount, method, scope, pat, generator, pname="weight", scores=None
) -> list[torch.Tensor]:
    names = [n for n, _ in layers]
    scores = M.check_importance_scores(scores, layers, pname, method)
    # masks first: _current_mask names a layer without a dense weight (compressed) instead of an AttributeError
    current = [_current_mask(n, layer, pname) for n, layer in layers]
    ranked = [scores.get(n, getattr(layer, pname)) for n, layer in layers]
    with torch.no_grad():
        return M.compute_masks(names, ranked, current, amount, method, scope, pat, generator)


def _set_module(model: nn.Module, qualname: str, new: nn.Module) -> nn.Module:
    if qualname == "":
        return new
    parent, _, attr = qualname.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)
    return model


def _twin(layer: nn.Module):
    return SparseLinear if type(layer) is nn.Linear else sparse_twins().get(type(layer))


def _apply_mask(name: str, layer: nn.Module, mask: torch.Tensor, pname: str = "weight") -> nn.Module:
    """Swap a dense layer for its sparse twin, or update a pruned layer's mask in place; returns the layer to
    keep. The twin holds the dense layer's own Parameter objects: optimizers built before stay valid."""
    twin = _twin(layer)
    if pname == "bias":
        if twin is not None:
            weight = layer.weight
            layer = twin.from_dense(layer, torch.ones(weight.shape, dtype=torch.bool, device=weight.device))
        layer.set_bias_mask(mask)
        return layer
    if twin is not None:
        return twin.from_dense(layer, mask)
    if hasattr(layer, "set_mask"):  # an already-pruned layer: in place
        layer.set_mask(mask)
        return layer
    # a pruned layer without set_mask (a minimal SparseLinear): rebuilt around the same tensors
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
    *,
    name="weight",
    importance_scores=None,
    example_inputs=None,
    importance=None,
    round_to=None,
    allow_inexact=False,
):
    """Prune model's layers; returns (model, Report). Three forms of pruning live in pyopt:
    weight pruning (this function's mask patterns), channel pruning (pattern="channel") and layer pruning
    (pyopt.prune_layers).

    amount:  float in [0, 1] = target fraction of each layer's weights (scope="layer") or of all selected
             weights together (scope="global") that are zero afterwards, counting already-pruned ones; int =
             count of weights (blocks for a block pattern, channels for "channel"). round() as torch does.
             None or 1 - N/M for an N:M pattern (the pattern fixes it).
    method:  "magnitude" (smallest |w|, block L2 norm, channel L1/L2 norm) or "random" (draws from `generator`).
    scope:   "layer" or "global" (rank across every selected layer; not for N:M or "channel").
    pattern: "unstructured"; "N:M" such as "2:4", "1:4", "4:8" (keep the N largest |w| of every M consecutive
             weights along the input dim, for conv the flattened in_channels/groups*kh*kw dim); (bh, bw) blocks
             of the (out, in) weight matrix; "channel": physically remove channels (a smaller dense model).
             With example_inputs, any model torch.export can trace: coupled channels (residual adds, concats,
             norms, grouped convs, attention heads) are found and removed together, see
             pyopt/pruning/structured.py (importance, round_to, allow_inexact are its options). Without,
             nn.Sequential chains only (pyopt/pruning/channel.py). channel_norm picks L1 or L2 for both.
    include / exclude: see pyopt/convert/select.py. Embedding tables are pruned only when include names them.
    name:    "weight" (default) or "bias": the parameter to prune (a bias only with pattern="unstructured").
    importance_scores: {layer name: tensor of the pruned parameter's shape}, ranked instead of the parameter
             (torch.nn.utils.prune's importance_scores); magnitude only. For pattern="channel" the channel
             norms of the scores rank the channels.

    Dense layers are replaced by their masked twins (nn.Linear -> pyopt.nn.SparseLinear, nn.Conv1d/2d/3d ->
    SparseConv1d/2d/3d, nn.Embedding -> SparseEmbedding), which hold the dense layers' own Parameter objects
    (an optimizer built before pruning keeps training them); already-pruned layers get the intersection of
    old and new mask in place, so calling prune again with a larger amount prunes gradually.
    pyopt.unprune turns them back into plain torch layers. The model is changed in place and returned (the
    returned object differs only when the model itself is a single layer).
    """
    amount, pat = _check_args(amount, method, scope, pattern, generator, name)
    if pat.kind == "channel":
        if scope != "layer":
            raise ValueError(
                f"scope={scope!r}: pattern='channel' prunes each layer's channels, use scope='layer'"
            )
        if name != "weight":
            raise ValueError(f"name={name!r}: pattern='channel' removes whole channels, not one parameter")
        if example_inputs is not None:
            from .structured import prune_structured

            return prune_structured(
                model, amount, example_inputs, method=method, include=include, exclude=exclude,
                generator=generator, norm=channel_norm, importance=importance, round_to=round_to,
                allow_inexact=allow_inexact, importance_scores=importance_scores,
            )  # fmt: skip
        if importance is not None or round_to is not None or allow_inexact:
            raise ValueError(
                "importance=, round_to= and allow_inexact= need example_inputs= (the graph path)"
            )
        return prune_channels(
            model, amount, method, include, exclude, generator, channel_norm, importance_scores
        )
    if importance is not None or round_to is not None or example_inputs is not None or allow_inexact:
        raise ValueError(
            f"pattern='{pat}': importance=, round_to=, example_inputs= and allow_inexact= are options of "
            "pattern='channel'"
        )
    layers = _layers_with(select_layers(model, include, exclude), name)
    new_masks = _layer_masks(layers, amount, method, scope, pat, generator, name, importance_scores)
    report = Report("prune")
    kept = total = 0
    for (lname, old), mask in zip(layers, new_masks, strict=True):
        model = _set_module(model, lname, _apply_mask(lname, old, mask, name))
        nnz, numel = int(mask.sum()), mask.numel()
        kept, total = kept + nnz, total + numel
        report.add(
            lname,
            "pruned",
            type=layer_kind(old) or type(old).__name__,
            param=name,
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
