"""Backend registry: one dispatch path for every `torch.ops.pyopt.*` op.

Each op declared in pyopt/_ops.py gets exactly one kernel registered with the dispatcher (for the
CompositeExplicitAutograd key, i.e. every device): the router built here. At call time it looks at the
device of the op's tensors and picks one implementation:

    forced backend (pyopt.use_backend), if it implements the op and can run on that device, else
    cpu tensors:   "cpu" (C++, pyopt._C)      -> "reference"
    cuda tensors:  "cuda" (C++, pyopt._C_cuda) -> "triton" -> "reference"
                   (Triton first for the ops in CUDA_TRITON_FIRST, where it measured faster)
    other devices: "reference"

"reference" is pure torch: the fallback on any device and the oracle of the tests. "triton" also runs on
CPU tensors when TRITON_INTERPRET=1 (tests), but only when forced. Because the router sits behind the
dispatcher, torch.compile sees one opaque op (its fake impl) and never falls back to eager.

Backends register with `@register("op_name", "cpu")` from pyopt/ops/<family>.py. The backend and ISA
choices live in context variables (per thread / task), not in global mutable state.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch

from . import native as _native

BACKENDS = ("reference", "cpu", "cuda", "triton")
DEFAULT_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}
# Ops whose Triton kernel measured faster than the CUDA C++ one on the GPU (NVIDIA H200, torch 2.11,
# bench/results/NVIDIA-H200-gpu.md; both backends timed in the same run, results checked):
#   int8_linear_dynamic  M=1024 K=N=4096 bf16: triton 0.195 ms, cuda 1.094 ms (dp4a, no tensor cores)
#   binary_linear        M=64 4096x4096 bf16:  triton 0.092 ms, cuda 0.644 ms (M=1: 0.096 vs 0.101)
#   quantize_per_channel 8192^2 fp32:         triton 0.413 ms, cuda 0.633 ms
#   dequantize_per_channel 8192^2 int8:       triton 0.299 ms, cuda 0.403 ms
# Everything else was faster on the CUDA C++ kernel (or has only one GPU implementation).
CUDA_TRITON_FIRST = frozenset(
    {"int8_linear_dynamic", "binary_linear", "quantize_per_channel", "dequantize_per_channel"}
)

_impls: dict[str, dict[str, Callable]] = {}
_forced_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("pyopt_backend", default=None)
_requested_isa: contextvars.ContextVar[int] = contextvars.ContextVar("pyopt_isa", default=-1)


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: `fn` implements `pyopt::<op>` for `backend` (same signature as the schema)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def deco(fn: Callable) -> Callable:
        _impls.setdefault(op, {})[backend] = fn
        return fn

    return deco


def usable(backend: str, device_type: str) -> bool:
    """Whether `backend` can run on tensors of `device_type` in this process."""
    if backend == "reference":
        return True
    if backend == "cpu":
        return device_type == "cpu" and _native.cpu_ext() is not None
    if backend == "cuda":
        return device_type == "cuda" and _native.cuda_ext() is not None
    if backend == "triton":
        if _native.triton_version() is None:
            return False
        return device_type == "cuda" or (device_type == "cpu" and _native.triton_interpret())
    return False


def available_backends(device_type: str | None = None) -> list[str]:
    """Backends usable here, for one device type or (None) for any device this machine has.

    Never initialises CUDA: without a device type, "cuda"/"triton" count as available when the
    extension is built / Triton is installed and torch was built with CUDA.
    """
    if device_type is not None:
        return [b for b in BACKENDS if usable(b, device_type)]
    out = ["reference"]
    if _native.cpu_ext() is not None:
        out.append("cpu")
    if torch.version.cuda is not None and _native.cuda_ext_built():
        out.append("cuda")
    if _native.triton_version() is not None and (
        torch.version.cuda is not None or _native.triton_interpret()
    ):
        out.append("triton")
    return out


def implementations(op: str) -> list[str]:
    """Backends that register an implementation of `op` (whether or not they are usable here)."""
    return [b for b in BACKENDS if b in _impls.get(op, {})]


def select(op: str, device_type: str) -> tuple[str, Callable]:
    """The (backend name, function) that runs `op` on `device_type` right now."""
    impls = _impls.get(op)
    if not impls:
        raise NotImplementedError(f"pyopt::{op} has no implementation registered")
    forced = _forced_backend.get()
    if forced is not None and forced in impls and usable(forced, device_type):
        return forced, impls[forced]
    order = DEFAULT_ORDER.get(device_type, ("reference",))
    if device_type == "cuda" and op in CUDA_TRITON_FIRST:
        order = ("triton", "cuda", "reference")
    for b in order:
        if b in impls and usable(b, device_type):
            return b, impls[b]
    raise NotImplementedError(f"pyopt::{op} has no implementation for {device_type} tensors")


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
    token = _forced_backend.set(name)
    try:
        yield
    finally:
        _forced_backend.reset(token)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Cap the CPU ISA the C++ kernels may use ("scalar", "avx2", "avx512", "avx512_vnni").

    The kernels never use more than the CPU has, so asking for more is harmless. Tests use this to
    run the AVX2 and scalar paths on an AVX-512 machine. PYOPT_CPU_ISA sets the process default.
    """
    if name not in _native.ISA_NAMES:
        raise ValueError(f"use_isa: name must be one of {_native.ISA_NAMES}, got {name!r}")
    token = _requested_isa.set(_native.ISA_NAMES.index(name))
    try:
        yield
    finally:
        _requested_isa.reset(token)


def requested_isa() -> int:
    """The ISA cap to pass to a C++ kernel (-1 = the best the CPU has)."""
    isa = _requested_isa.get()
    if isa < 0:
        env = __import__("os").environ.get("PYOPT_CPU_ISA")
        if env in _native.ISA_NAMES:
            return _native.ISA_NAMES.index(env)
    return isa


def _device_of(args: tuple, names: list[str]) -> torch.device:
    """Device of the op's tensors; a clear error naming the argument when they disagree."""
    device, first = None, None
    for name, a in zip(names, args, strict=False):
        tensors = a if isinstance(a, (list, tuple)) else (a,)
        for t in tensors:
            if isinstance(t, torch.Tensor):
                if device is None:
                    device, first = t.device, name
                elif t.device != device:
                    raise ValueError(
                        f"{name} is on {t.device} but {first} is on {device}: all tensors must be on one device"
                    )
    return device if device is not None else torch.device("cpu")


def make_router(op: str, arg_names: list[str], check: Callable | None) -> Callable:
    """The single dispatcher kernel of `pyopt::<op>`: validate, then run the selected backend."""

    def router(*args, **kwargs):
        device = _device_of(args, arg_names)
        if check is not None:
            check(*args, **kwargs)
        _, fn = select(op, device.type)
        return fn(*args, **kwargs)

    router.__name__ = f"pyopt_{op}_router"
    return router
