"""pyopt: native kernels that make PyTorch models smaller and faster.

`import pyopt` never initialises CUDA and never fails because a native part is missing: it warns once
and the reference implementations serve (`pyopt info` says which backend runs each op).

Layers, bottom to top: `_rules` (shared rules) -> `ops` (the torch.ops.pyopt library) -> `functional`
(tensor API) and `nn` (modules) -> `convert` / `pruning` (model conversion) and `optim` -> `io` (files)
-> `cli` (the command line).
"""

from . import nn, ops, optim  # noqa: F401  (public subpackages; ops registers torch.ops.pyopt.*)
from .convert import quantize, sparsify
from .functional import (
    choose_qparams,
    dequantize_per_channel,
    dequantize_per_group,
    dequantize_per_tensor,
    quantize_per_channel,
    quantize_per_group,
    quantize_per_tensor,
    quantize_per_token,
)
from .io import export_onnx, load, save
from .ops.backends import available_backends, implementations, use_backend, use_isa
from .pruning import GradualPruner, prune, prune_layers, prune_masks, sparsity_schedule, unprune

__version__ = "0.1.0"
__all__ = [
    "GradualPruner",
    "available_backends",
    "choose_qparams",
    "dequantize_per_channel",
    "dequantize_per_group",
    "dequantize_per_tensor",
    "export_onnx",
    "implementations",
    "load",
    "prune",
    "prune_layers",
    "prune_masks",
    "quantize",
    "quantize_per_channel",
    "quantize_per_group",
    "quantize_per_tensor",
    "quantize_per_token",
    "save",
    "sparsify",
    "sparsity_schedule",
    "unprune",
    "use_backend",
    "use_isa",
    "__version__",
]

from . import tuning as _tuning  # noqa: E402

_tuning.apply_cached()  # this machine's `pyopt tune` result, if cached (never a search at import)
