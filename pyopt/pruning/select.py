"""The layers pruning acts on (shared by pyopt.prune's mask and channel paths)."""

from __future__ import annotations

from torch import nn

from ..convert.select import Selector
from ..nn import SparseConv2d, SparseLinear


def layer_kind(module: nn.Module) -> str | None:
    """'linear' / 'conv' for prunable layers (dense or already pruned), else None.

    Exact types only: subclasses of nn.Linear (e.g. MultiheadAttention's out_proj) are read through .weight by
    their owners, which a swapped-in layer would silently bypass.
    """
    if type(module) in (nn.Linear, SparseLinear):
        return "linear"
    if type(module) in (nn.Conv2d, SparseConv2d):
        return "conv"
    return None


def select_layers(model: nn.Module, include=None, exclude=None) -> list[tuple[str, nn.Module]]:
    """(qualified name, layer) of every prunable layer that `include` selects and `exclude` does not.

    include / exclude: pyopt/convert/select.py. include=None selects every nn.Linear / nn.Conv2d (and
    already-pruned SparseLinear / SparseConv2d).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    selected = Selector(include, exclude)
    return [(name, mod) for name, mod in model.named_modules() if layer_kind(mod) and selected(name, mod)]
