"""Pruning, in its three forms: weight pruning (pyopt.prune's mask patterns), channel pruning
(pyopt.prune(pattern="channel"): a physically smaller dense model) and layer pruning (pyopt.prune_layers);
pyopt.unprune turns masked layers back into torch layers; the gradual schedule."""

from .api import prune, prune_masks
from .layers import prune_layers
from .remove import unprune
from .schedule import GradualPruner, sparsity_schedule
from .select import select_layers
from .structured import Group, channel_groups

__all__ = [
    "GradualPruner",
    "Group",
    "channel_groups",
    "prune",
    "prune_layers",
    "prune_masks",
    "select_layers",
    "sparsity_schedule",
    "unprune",
]
