"""pyopt.unprune(model): make pruning permanent and give back plain torch layers (torch.nn.utils.prune.remove's
role), so that the model's state_dict loads into the unpruned architecture.

Every pruned layer (SparseLinear, SparseConv1d/2d/3d, SparseEmbedding) is replaced by the torch layer it was
made from, holding the same Parameter objects (an optimizer keeps training them) with the pruned entries
exactly zero; the masks are dropped. A compressed SparseLinear ("csr", "bsr", "2:4", "dense") gets its dense
weight back as a new Parameter; a "csr_int8" one raises (its weights are int8 now). The zeros are no longer
enforced afterwards: further training moves them, as after prune.remove.
"""

from __future__ import annotations

from torch import nn

from ..convert.report import Report
from .select import layer_kind, select_layers


def unprune(model: nn.Module, include=None, exclude=None):
    """Turn pyopt's pruned layers back into torch layers; returns (model, Report). ValueError if the
    selection holds no pruned layer (as prune.remove on an unpruned module)."""
    from .api import _set_module

    include = include if include is not None else "*"  # Embedding tables are not opt-in here
    layers = [(n, m) for n, m in select_layers(model, include, exclude) if hasattr(m, "to_dense")]
    if not layers:
        raise ValueError("pyopt.unprune: the model has no pruned layer to turn back into a torch layer")
    report = Report("unprune")
    for name, layer in layers:
        dense = layer.to_dense()
        model = _set_module(model, name, dense)
        zeros = int((dense.weight == 0).sum())
        report.add(name, "unpruned", type=layer_kind(layer), params=dense.weight.numel(), zeros=zeros)
    report.summary = {"layers": len(layers)}
    return model, report
