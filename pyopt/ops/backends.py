"""Which kernel runs a `torch.ops.pyopt.*` call, and how tests force another one.

Each op has at most one kernel per dispatch key, registered once at import:

    CPU                         the C++ kernel (pyopt._C, csrc/cpu), which picks its ISA tier itself
    CUDA                        the CUDA C++ kernel (pyopt._C_cuda), or the Triton kernel where that measured
                                faster (CUDA_TRITON_FIRST) or the C++ one is missing
    CompositeExplicitAutograd   the pure-torch reference (pyopt/ops/reference): any other device, and the ops
                                without a native kernel; also the tests' oracle

so a call reaches its kernel in one hop, with no Python on the CPU/CUDA hot path. `use_backend(name)` forces
one implementation for the ops that have it (tests, debugging): while it is active a dispatch mode hands the
`pyopt::` calls to the forced kernel (a Python hop, only then). `use_isa(name)` caps the CPU ISA tier for the
calling thread (a thread-local the C++ kernels read; PYOPT_CPU_ISA sets the process default).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import native
from .schemas import LIB

BACKENDS = ("reference", "cpu", "cuda", "triton")
ISA_NAMES = native.ISA_NAMES

# The ops the CUDA C++ extension implements (csrc/cuda/*_bind.cpp registers exactly these).
CUDA_OPS = frozenset(
    {
        "quantize_per_tensor", "quantize_per_channel", "quantize_per_token", "quantize_per_group",
        "dequantize_per_tensor", "dequantize_per_channel", "dequantize_per_group",
        "dequantize_per_tensor.out", "dequantize_per_channel.out", "dequantize_per_group.out",
        "int8_linear_dynamic", "int8_linear_weight_only", "binary_linear", "sparse_csr_linear", "fused_sgd_",
    }
)  # fmt: skip
# Ops whose Triton kernel measured faster than the CUDA C++ one on the GPU (NVIDIA H200, torch 2.11,
# bench/results/NVIDIA-H200-gpu.md; both backends timed in the same run, results checked):
#   int8_linear_dynamic  M=1024 K=N=4096 bf16: triton 0.195 ms, cuda 1.094 ms (dp4a, no tensor cores)
#   binary_linear        M=64 4096x4096 bf16:  triton 0.092 ms, cuda 0.644 ms (M=1: 0.096 vs 0.101)
#   quantize_per_channel 8192^2 fp32:         triton 0.413 ms, cuda 0.633 ms
#   dequantize_per_channel 8192^2 int8:       triton 0.299 ms, cuda 0.403 ms
CUDA_TRITON_FIRST = frozenset(
    {"int8_linear_dynamic", "binary_linear", "quantize_per_channel", "dequantize_per_channel"}
)

_reference: dict[str, Callable] = {}  # op name ("x" or "x.out") -> pure-torch kernel
_triton: dict[str, Callable] = {}  # op name -> Triton adapter


def reference(op: str) -> Callable[[Callable], Callable]:
    """Decorator: `fn` is the pure-torch kernel of `pyopt::<op>` (CompositeExplicitAutograd)."""

    def deco(fn: Callable) -> Callable:
        LIB.impl(op, fn, "CompositeExplicitAutograd")
        _reference[op] = fn
        return fn

    return deco


def triton(op: str) -> Callable[[Callable], Callable]:
    """Decorator: `fn` runs `pyopt::<op>` with Triton kernels (registered for CUDA by register_cuda)."""

    def deco(fn: Callable) -> Callable:
        _triton[op] = fn
        return fn

    return deco


@functools.cache
def _native_key(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"pyopt::{op}", key)


def implementations(op: str) -> list[str]:
    """The backends that implement `op` (whether or not they can run here)."""
    have = {
        "reference": op in _reference,
        "cpu": _native_key(op, "CPU"),
        "cuda": op in CUDA_OPS,
        "triton": op in _triton,
    }
    return [b for b in BACKENDS if have[b]]


def usable(backend: str, device_type: str) -> bool:
    """Whether `backend` can run on tensors of `device_type` in this process."""
    if backend == "reference":
        return True
    if backend == "cpu":
        return device_type == "cpu" and native.cpu_ext() is not None
    if backend == "cuda":
        return device_type == "cuda" and native.cuda_ext() is not None
    if backend == "triton":
        if native.triton_version() is None:
            return False
        return device_type == "cuda" or (device_type == "cpu" and native.triton_interpret())
    return False


def available_backends(device_type: str | None = None) -> list[str]:
    """Backends usable here, for one device type or (None) for any device this machine has.

    Never initialises CUDA: without a device type, "cuda"/"triton" count as available when the
    extension is built / Triton is installed and torch was built with CUDA.
    """
    if device_type is not None:
        return [b for b in BACKENDS if usable(b, device_type)]
    out = ["reference"]
    if native.cpu_ext() is not None:
        out.append("cpu")
    if torch.version.cuda is not None and native.cuda_ext_built():
        out.append("cuda")
    if native.triton_version() is not None and (torch.version.cuda is not None or native.triton_interpret()):
        out.append("triton")
    return out


def cuda_kernel(op: str) -> str:
    """What runs `op` on CUDA tensors: "cuda", "triton" or "reference" (as registered by register_cuda)."""
    if _native_key(op, "CUDA"):
        return "triton" if op in _triton_on_cuda() else "cuda"
    return "reference"


def cpu_kernel(op: str) -> str:
    return "cpu" if _native_key(op, "CPU") else "reference"


@functools.cache
def _triton_on_cuda() -> frozenset[str]:
    """The ops whose CUDA kernel is Triton: those it measured faster on, and those the C++ extension lacks."""
    if torch.version.cuda is None or native.triton_version() is None:
        return frozenset()
    have_cuda_ext = native.cuda_ext() is not None
    return frozenset(
        op
        for op in _triton
        if not have_cuda_ext or op.split(".")[0] in CUDA_TRITON_FIRST or op not in CUDA_OPS
    )


def register_cuda() -> None:
    """Register the CUDA key's kernels, once, at import (never initialises CUDA)."""
    if torch.version.cuda is None:
        return
    triton_ops = _triton_on_cuda()
    ext = native.cuda_ext()
    if ext is not None:
        ext.register_kernels(sorted(CUDA_OPS - triton_ops))
    for op in sorted(triton_ops):
        LIB.impl(op, _triton[op], "CUDA")
    _native_key.cache_clear()


# ----------------------------------------------------------------------------------------------------------
# forcing a backend (tests, debugging)
# ----------------------------------------------------------------------------------------------------------
def _tensors(args):
    for a in args:
        for t in a if isinstance(a, (list, tuple)) else (a,):
            if isinstance(t, torch.Tensor):
                yield t


def _real_device(args) -> str | None:
    """The device type of a call on real tensors; None for fake / functional / meta tensors (torch.compile,
    opcheck), which must reach the op's fake, not a forced kernel."""
    device = None
    for t in _tensors(args):
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.device.type == "meta":
            return None
        device = device or t.device.type
    return device or "cpu"


def forced_kernel(op: str, backend: str, device_type: str) -> Callable | None:
    """The Python callable that runs `op` on `backend` for `device_type` tensors, or None when the default
    kernel (what the dispatcher calls) is that backend's, or the backend cannot run it there."""
    if backend == "reference":
        return _reference.get(op)
    if backend == "triton":
        if (
            op in _triton
            and usable("triton", device_type)
            and not (device_type == "cuda" and op in _triton_on_cuda())
        ):
            return _triton[op]
        return None
    if (
        backend == "cuda"
        and device_type == "cuda"
        and op in _triton_on_cuda()
        and usable("cuda", device_type)
    ):
        return getattr(native.cuda_ext(), op.replace(".", "_"), None)  # the C++ kernel behind Triton's key
    return None


class _ForcedBackend(TorchDispatchMode):
    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "pyopt":
            name = func._schema.name.split("::", 1)[1]
            if func._overloadname != "default":
                name += "." + func._overloadname
            device = _real_device(list(args) + list(kwargs.values()))
            fn = None if device is None else forced_kernel(name, self.backend, device)
            if fn is not None:
                return fn(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force one implementation for the ops that have it (others keep their default).

    >>> with pyopt.use_backend("reference"):
    ...     q = pyopt.quantize_per_tensor(x, 0.1, 0)
    """
    if name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {BACKENDS}, got {name!r}")
    if name not in available_backends():
        raise RuntimeError(
            f"use_backend: backend {name!r} is not available here (have {available_backends()})"
        )
    with _ForcedBackend(name):
        yield


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Cap the CPU ISA the C++ kernels called from this thread may use ("scalar", "avx2", "avx512",
    "avx512_vnni", "amx"). The kernels never use more than the CPU has, so asking for more is harmless. Tests use this
    to run every ISA path on one machine. PYOPT_CPU_ISA sets the process default."""
    if name not in ISA_NAMES:
        raise ValueError(f"use_isa: name must be one of {ISA_NAMES}, got {name!r}")
    ext = native.cpu_ext()
    if ext is None:  # no C++ kernels: nothing to cap
        yield
        return
    previous = ext.set_isa_cap(ISA_NAMES.index(name))
    try:
        yield
    finally:
        ext.set_isa_cap(previous)
