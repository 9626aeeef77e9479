"""One table of test tolerances, with the reason for each.

Rule (flash-attention's): a kernel computing in low precision may differ from the float64 reference by at
most 2x what torch's own computation in that precision does. The values below are those bounds, measured
for the shapes the tests use (K up to ~4k), rounded up.

Integer outputs (quantize, int8 GEMM accumulators) are compared exactly: no tolerance.
"""

import torch

# (rtol, atol) for results compared against a float64 reference.
TOL = {
    # fp32 accumulation of K products: error grows ~sqrt(K)*eps; torch's own fp32 matmul vs float64 at
    # K=4096 is ~3e-6 relative. 2x that, with headroom for different summation orders -> 1e-5 / 1e-5.
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-12, 1e-12),
    # bf16 output rounding alone is 2^-8 = 3.9e-3 relative; torch's bf16 matmul vs float64 ~ 8e-3.
    torch.bfloat16: (1.6e-2, 1.6e-2),
    # fp16: 2^-11 = 4.9e-4 per rounding; torch's fp16 matmul vs float64 ~ 1e-3.
    torch.float16: (2e-3, 2e-3),
}


def tol(dtype: torch.dtype) -> dict:
    rtol, atol = TOL[dtype]
    return {"rtol": rtol, "atol": atol}


# Two float32 results of the same sum in different orders (e.g. a K-blocked kernel vs the unblocked reference,
# onnxruntime's MatMul vs torch's), neither of them float64: each partial sum of O(1) terms rounds with error
# ~eps * |partial|, so the two differ by ~eps * n / sqrt(2) for n terms, 2e-5 at the ~500 terms the tests sum
# (eps = 6e-8); 1e-4 leaves 5x headroom, and atol covers outputs that cancel to ~0.
FP32_REORDERED = {"rtol": 1e-4, "atol": 1e-4}

# FusedSGD trajectories (50 steps) against torch.optim.SGD(foreach=False). The C++ and reference backends are
# bit-exact (same fma/rounding sequence as ATen). The Triton interpreter's tl.fma is numpy's a*b+c (two
# roundings), so each step may differ by ~1 ulp; over 50 steps that stays below the 1e-6 relative
# bound for float32 (values are O(1), atol covers entries that cancel to ~0) and ~1e-13 for float64.
SGD_TRAJECTORY = {
    torch.float32: {"rtol": 1e-6, "atol": 1e-6},
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
}
