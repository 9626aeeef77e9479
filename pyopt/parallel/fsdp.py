"""FSDP2 (torch's `fully_shard`) with pyopt's masked layers: masks sharded like their weights.

`fully_shard` replaces every parameter of the module with a DTensor holding this rank's shard, so an
attribute set on the old parameter — the pruning mask that FusedSGD reads (pyopt.nn.set_param_mask) —
would be lost. pyopt.parallel.fully_shard calls torch's and gives each new sharded parameter the mask of
the parameter it replaces, sharded the same way (pyopt/_rules.py: set_param_mask): each rank's FusedSGD
then keeps the pruned weights of its shard, and their momentum, exactly zero without communication.
The mask buffers of SparseLinear / SparseConv2d stay whole on every rank (the forward runs on the
all-gathered weight and needs the whole mask).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.fsdp import fully_shard as _torch_fully_shard
from torch.distributed.tensor import DTensor

from .._rules import get_param_mask, set_param_mask


def fully_shard(module: nn.Module | list[nn.Module], **kwargs):
    """torch.distributed.fsdp.fully_shard(module, **kwargs) (mesh, reshard_after_forward, mp_policy,
    offload_policy, ... as torch's), keeping pyopt's parameter masks. Returns what torch's returns."""
    modules = module if isinstance(module, list) else [module]
    masks = []  # (owning module, parameter name, mask)
    for m in modules:
        for owner in m.modules():
            for name, p in owner.named_parameters(recurse=False):
                mask = get_param_mask(p)
                if mask is not None and not isinstance(p, DTensor):  # (already sharded: kept)
                    masks.append((owner, name, mask))
    out = _torch_fully_shard(module, **kwargs)
    for owner, name, mask in masks:
        set_param_mask(owner._parameters[name], mask)
    return out
