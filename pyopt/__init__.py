"""pyopt: native kernels that make PyTorch models smaller and faster.

`import pyopt` never initialises CUDA and never fails because a native part is missing: it warns once
and the reference implementations serve (`pyopt info` says which backend runs each op).
"""

from . import _native

_native.cpu_ext()  # registers torch.ops.pyopt_cpu.* if the C++ extension is built (never fails)

# Schemas first, then the implementations, then the layers and model-level API built on them.
from . import _ops, nn, ops, optim  # noqa: E402,F401
from ._backend import available_backends, implementations, use_backend, use_isa  # noqa: E402
from .nn.sparse_linear import sparsify  # noqa: E402
from .onnx_export import export_onnx  # noqa: E402
from .pruning import GradualPruner, prune, prune_masks, sparsity_schedule  # noqa: E402
from .quant import (  # noqa: E402
    choose_qparams,
    dequantize_per_channel,
    dequantize_per_group,
    dequantize_per_tensor,
    quantize_per_channel,
    quantize_per_group,
    quantize_per_tensor,
    quantize_per_token,
)
from .quantize import quantize  # noqa: E402
from .serialization import load, save  # noqa: E402

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
    "prune_masks",
    "quantize",
    "quantize_per_channel",
    "quantize_per_group",
    "quantize_per_tensor",
    "quantize_per_token",
    "save",
    "sparsify",
    "sparsity_schedule",
    "use_backend",
    "use_isa",
    "__version__",
]


def _info_extra() -> None:
    """Extra lines for `pyopt info`: the sparse dispatcher's calibrated decisions in this process."""
    from .ops.sparse_dispatch import DEFAULT_CACHE

    print(f"sparse dispatcher: {len(DEFAULT_CACHE)} calibrated decision(s) in this process")
    for key, d in DEFAULT_CACHE.items():
        print(f"  {key[0]} {key[1]} {key[2]} sparsity~{key[3]:.2f}: {d.format} ({d.reason})")
