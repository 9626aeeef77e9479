"""Build pyopt's native parts.

pyopt._C       C++ CPU kernels (csrc/cpu/*.cpp) and the autograd kernels of every device (csrc/autograd.cpp),
               always built unless PYOPT_NO_NATIVE=1.
               Hot loops carry per-function target attributes (AVX-512/VNNI, AVX2) and are picked at run
               time by CPUID, so the binary itself is plain x86-64 and runs anywhere.
               PYOPT_SANITIZE=address (or address,undefined) builds it with AddressSanitizer (+ UBSan) for
               `make asan`, which builds a separate copy of the tree so the normal install is untouched.
pyopt._C_cuda  CUDA kernels (csrc/cuda/*.cu + *.cpp bindings), built only where torch has CUDA and nvcc
               exists. TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0".
kernels/       Triton kernels, shipped as the pure-Python package pyopt.kernels.
"""

import glob
import os
import shutil

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _extensions():
    if os.environ.get("PYOPT_NO_NATIVE") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cxx = [
        "-O3",
        "-std=c++17",
        "-fopenmp",
        "-fno-math-errno",
        "-Wall",
        "-Wno-unused-function",
        "-Werror=return-type",
        "-ffp-contract=off",
    ]  # no implicit FMA: the kernels round as the references (explicit fma where meant)
    link = ["-fopenmp"]
    sanitize = os.environ.get("PYOPT_SANITIZE", "")
    if sanitize:
        # -O1 -g: readable ASan reports; vptr is off because torch's classes come from libraries built
        # without UBSan's type info; recover off so that any finding fails the run.
        flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g", "-O1"]
        if "undefined" in sanitize:
            flags += ["-fno-sanitize=vptr", "-fno-sanitize-recover=all"]
        cxx = [f for f in cxx if f != "-O3"] + flags
        link += flags
    exts = [
        CppExtension(
            "pyopt._C",
            _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp"),
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    ]
    if torch.version.cuda is not None and shutil.which("nvcc") and _sources("csrc/cuda/*.cu"):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        exts.append(
            CUDAExtension(
                "pyopt._C_cuda",
                _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp"),
                include_dirs=[os.path.join(HERE, "csrc")],
                extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17"]},
            )
        )
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=bool(shutil.which("ninja")))}


ext_modules, cmdclass = _extensions()
setup(
    packages=[
        "pyopt",
        "pyopt.cli",
        "pyopt.convert",
        "pyopt.io",
        "pyopt.kernels",
        "pyopt.nn",
        "pyopt.ops",
        "pyopt.optim",
        "pyopt.pruning",
    ],  # fmt: skip
    package_dir={"pyopt.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
