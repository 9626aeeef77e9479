"""Shared test setup.

TRITON_INTERPRET=1 must be set before any @triton.jit decorator runs, so it is set here, before pyopt
(and so pyopt.kernels) is imported: the Triton kernels then run on CPU tensors in the interpreter.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import pyopt  # noqa: E402
from pyopt.ops import backends  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_params(op: str, devices=DEVICES):
    """pytest params (device, backend) for every implementation of `op` usable here; others skip."""
    params = []
    for device in devices:
        for backend in backends.BACKENDS:
            marks = []
            if backend not in backends.implementations(op):
                continue
            if not backends.usable(backend, device):
                marks.append(pytest.mark.skip(reason=f"{backend} backend not usable on {device} here"))
            params.append(pytest.param(device, backend, id=f"{device}-{backend}", marks=marks))
    return params


def isa_params():
    """The CPU ISAs this machine can run (each C++ kernel is tested on every one of them)."""
    best = pyopt.ops.native.ISA_NAMES.index(pyopt.ops.native.detected_isa())
    return [pytest.param(isa, id=isa) for isa in pyopt.ops.native.ISA_NAMES[: best + 1]]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def import_transformers():
    """transformers, imported so that it finds Hugging Face's `kernels` package (one of its dependencies): the
    checkout's Triton folder kernels/ shadows it while the repository root is on sys.path (python -m pytest).
    The installed `kernels` is imported first, with the root off sys.path (pyopt's own Triton kernels are
    pyopt.kernels and unaffected)."""
    import importlib
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    loaded = sys.modules.get("kernels")
    if loaded is None or os.path.dirname(os.path.dirname(getattr(loaded, "__file__", "") or "")) == root:
        saved = sys.path[:]
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != root]
        sys.modules.pop("kernels", None)
        try:
            importlib.import_module("kernels")
        except ImportError:
            pass
        finally:
            sys.path[:] = saved
    return importlib.import_module("transformers")
