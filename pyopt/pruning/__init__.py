"""Pruning: pyopt.prune (masks or channel removal), pyopt.prune_masks, the gradual schedule."""

from .api import prune, prune_masks
from .schedule import GradualPruner, sparsity_schedule
from .select import select_layers

__all__ = ["GradualPruner", "prune", "prune_masks", "select_layers", "sparsity_schedule"]
