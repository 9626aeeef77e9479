"""The layers pruning acts on (shared by pyopt.prune's mask and channel paths)."""

from __future__ import annotations

from torch import nn

from ..convert.select import Selector, matches
from ..nn import SparseConv1d, SparseConv2d, SparseConv3d, SparseEmbedding, SparseLinear


def sparse_twins() -> dict[type[nn.Module], type[nn.Module]]:
    """dense torch layer -> the pyopt layer pyopt.prune puts in its place (a masked twin, same Parameters).
    Built per call from this module's names, so a test can stand a minimal twin in for one of them."""
    return {
        nn.Linear: SparseLinear,
        nn.Conv1d: SparseConv1d,
        nn.Conv2d: SparseConv2d,
        nn.Conv3d: SparseConv3d,
        nn.Embedding: SparseEmbedding,
    }


def layer_kind(module: nn.Module) -> str | None:
    """The dense layer type name ("Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding") of a prunable layer,
    dense or already pruned, else None.

    Exact types only: subclasses of nn.Linear (e.g. MultiheadAttention's out_proj) are read through .weight by
    their owners, which a swapped-in layer would silently bypass.
    """
    twins = sparse_twins()
    if type(module) in twins:
        return type(module).__name__
    dense = next((d for d, s in twins.items() if type(module) is s), None)
    return dense.__name__ if dense is not None else None


def select_layers(model: nn.Module, include=None, exclude=None) -> list[tuple[str, nn.Module]]:
    """(qualified name, layer) of every prunable layer that `include` selects and `exclude` does not.

    include / exclude: pyopt/convert/select.py. include=None selects every nn.Linear / nn.Conv1d / 2d / 3d
    (and already-pruned SparseLinear / SparseConvNd). Embedding tables are selected only when `include` names
    them (by type or name): pruning a lookup table is a choice, not a default.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    selected = Selector(include, exclude)
    out = []
    for name, mod in model.named_modules():
        kind = layer_kind(mod)
        if kind is None or not selected(name, mod):
            continue
        if kind == "Embedding" and not (include is not None and matches(name, mod, selected.include)):
            continue
        out.append((name, mod))
    return out
