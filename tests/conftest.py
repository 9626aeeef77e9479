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
