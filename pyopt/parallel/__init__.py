"""Model parallelism with pyopt's layers and FusedSGD, on torch.distributed (no engine of our own).

- `fully_shard`: torch's FSDP2 `fully_shard`, keeping pyopt's pruning masks sharded like their weights
  (FusedSGD steps every rank's local shards in one fused call; pruned weights and momentum stay 0).
- `ColwiseParallel`, `RowwiseParallel`: tensor-parallel styles for torch's `parallelize_module` that also
  split Int8Linear, BinaryLinear and SparseLinear (int8 scales and sparse index structures cut with their
  weights); `parallelize_module`: torch's, naming the layer when a split is impossible (`ShardingError`).
- `save_checkpoint` / `load_checkpoint`: torch.distributed.checkpoint of model + optimizer, reshardable.
- `save` / `load`: a sharded model to one pyopt.save file and back.

This package imports torch.distributed; `import pyopt` does not import it.
"""

from .checkpoint import load, load_checkpoint, save, save_checkpoint
from .fsdp import fully_shard
from .layouts import ShardingError
from .styles import ColwiseParallel, RowwiseParallel, parallelize_module

__all__ = [
    "ColwiseParallel",
    "RowwiseParallel",
    "ShardingError",
    "fully_shard",
    "load",
    "load_checkpoint",
    "parallelize_module",
    "save",
    "save_checkpoint",
]
