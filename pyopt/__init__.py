"""pyopt: native kernels that make PyTorch models smaller and faster."""

from . import _native

_native.cpu_ext()  # registers torch.ops.pyopt_cpu.* if the C++ extension is built (never fails)

from . import (  # noqa: E402,F401  (schemas first, then the implementations)
    _ops,
    ops,
    optim,  # noqa: E402,F401  (FusedSGD)
)
from ._backend import available_backends, implementations, use_backend, use_isa  # noqa: E402

__version__ = "0.1.0"
__all__ = ["available_backends", "implementations", "use_backend", "use_isa", "__version__"]
from .pruning import GradualPruner, prune, prune_masks, sparsity_schedule  # noqa: E402

__all__ += ["GradualPruner", "prune", "prune_masks", "sparsity_schedule"]
from .onnx_export import export_onnx  # noqa: E402
from .quantize import quantize  # noqa: E402
from .serialization import load, save  # noqa: E402

__all__ += ["export_onnx", "load", "quantize", "save"]
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

__all__ += [
    "choose_qparams",
    "dequantize_per_channel",
    "dequantize_per_group",
    "dequantize_per_tensor",
    "quantize_per_channel",
    "quantize_per_group",
    "quantize_per_tensor",
    "quantize_per_token",
]

# sparse family (issue 4): model-level compression and the dispatcher's decisions in `pyopt info`
from .nn.sparse_linear import sparsify  # noqa: E402

__all__ += ["sparsify"]


def _info_extra() -> None:
    from .ops.sparse_dispatch import DEFAULT_CACHE

    print(f"sparse dispatcher: {len(DEFAULT_CACHE)} calibrated decision(s) in this process")
    for key, d in DEFAULT_CACHE.items():
        print(f"  {key[0]} {key[1]} {key[2]} sparsity~{key[3]:.2f}: {d.format} ({d.reason})")
