"""Loading the native parts (pyopt._C, pyopt._C_cuda) and Triton, without ever failing `import pyopt`.

Nothing here initialises CUDA: loading the CUDA extension only registers its kernels, and Triton is imported
only where Triton kernels are registered or forced.
"""

from __future__ import annotations

import functools
import importlib
import os
import warnings

import torch

ISA_NAMES = ("scalar", "avx2", "avx512", "avx512_vnni", "amx")  # csrc/cpu/cpu_isa.h kIsaNames

_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


@functools.cache
def cpu_ext():
    """The pyopt._C module (its import registers the CPU kernels of torch.ops.pyopt.*), or None."""
    if os.environ.get("PYOPT_NO_NATIVE") == "1":
        return None
    import torch  # noqa: F401  (libtorch must be loaded before the extension)

    try:
        return importlib.import_module("pyopt._C")
    except ImportError as e:  # not built (PYOPT_NO_NATIVE=1 install) or built against another torch
        _warn_once("cpu", f"pyopt: C++ CPU kernels unavailable ({e}); using the reference implementations")
        return None


@functools.cache
def cuda_ext():
    """The pyopt._C_cuda module (its register_kernels() registers the CUDA kernels), or None. Loading it does
    not initialise CUDA."""
    if os.environ.get("PYOPT_NO_NATIVE") == "1":
        return None
    import torch  # noqa: F401

    try:
        return importlib.import_module("pyopt._C_cuda")
    except ImportError:
        return None


def cuda_ext_built() -> bool:
    """Whether pyopt._C_cuda exists on disk, without importing it (importing may touch CUDA)."""
    return importlib.util.find_spec("pyopt._C_cuda") is not None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def triton_version() -> str | None:
    try:
        import triton
    except Exception:  # ImportError, or a broken triton install
        return None
    return triton.__version__


def detected_isa() -> str:
    """The best CPU ISA the C++ kernels can use here ("scalar" if they are not built)."""
    ext = cpu_ext()
    return "scalar" if ext is None else ISA_NAMES[ext.detected_isa()]


def amx_status() -> dict[str, bool]:
    """What this machine offers of AMX: CPUID's amx_tile / amx_int8 / amx_bf16, whether the OS manages the tile
    state (XCR0) and whether Linux granted this process its use (the "amx" tier needs all but amx_bf16)."""
    ext = cpu_ext()
    keys = ("amx_tile", "amx_int8", "amx_bf16", "os_enabled", "permitted")
    return dict.fromkeys(keys, False) if ext is None else dict(ext.amx_status())


def active_isa() -> str:
    """The ISA the C++ kernels called from this thread use now (PYOPT_CPU_ISA and pyopt.use_isa cap it)."""
    ext = cpu_ext()
    return "scalar" if ext is None else ISA_NAMES[ext.active_isa()]


def direct(op: str):
    """A callable for `torch.ops.pyopt.<op>` on a model's per-call path (layer forwards, the optimizer step).

    With the native module it is pyopt._C.ops.<op> (csrc/op_bindings.cpp): typed argument conversion in C++,
    then the same dispatcher call as torch.ops (autograd, dispatch modes, every device's kernel) - the
    generic torch.ops conversion costs several times a small kernel. It is taken when the first argument is a
    plain torch.Tensor (or a list of them for the optimizer) and nothing is compiling; anything else (torch.compile
    or export tracing, fx proxies, fake tensors, tensor subclasses with __torch_function__) goes through
    torch.ops unchanged.
    """
    packet = getattr(torch.ops.pyopt, op)
    ext = cpu_ext()
    fast = None if ext is None else getattr(ext.ops, op, None)
    if fast is None:
        return packet
    plain, compiling = (torch.Tensor, torch.nn.Parameter), torch.compiler.is_compiling

    def call(first, *args):
        lead = first[0] if type(first) is list and first else first
        if type(lead) in plain and not compiling():
            return fast(first, *args)
        return packet(first, *args)

    call.__name__ = call.__qualname__ = op
    return call
