"""Triton kernel of pyopt::binary_linear: y = x @ (alpha * sign(W))^T + b from packed sign bits.

Each program computes a BLOCK_M x BLOCK_N tile. Per K block it loads the packed bytes of its BLOCK_N weight
rows, expands bit (k % 8) of byte k // 8 (LSB first, see pyopt/ops/binary_linear.py) to +1/-1 in registers
and feeds tl.dot; only a BLOCK_N x BLOCK_K tile of signs ever exists. Binary activations replace the x tile
by sign(x) (the dot of two sign tiles is the XNOR-popcount count, exact in any float format) and scale by
beta = mean|x|, accumulated in the same K loop.
K is a constexpr (one compile per layer width): the K loop then has a static trip count, and the
interpreter (numpy >= 2.4) cannot iterate over a runtime scalar.
fp32 inputs use input_precision="ieee" (TF32 would round x to 10 mantissa bits); fp16/bf16 multiply
exactly by +-1 and accumulate in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 64  # 16 (the smallest tl.dot tile) when M <= 16: decode-style calls waste less of each dot
BLOCK_N = 64
BLOCK_K = 64


@triton.jit
def _binary_linear_kernel(
    x_ptr,
    w_ptr,
    alpha_ptr,
    bias_ptr,
    y_ptr,
    M,
    N,
    K: tl.constexpr,
    KB: tl.constexpr,
    inv_k,
    HAS_BIAS: tl.constexpr,
    BINARY_ACT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    abs_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        x_mask = m_ok[:, None] & k_ok[None, :]
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * K + rk[None, :], mask=x_mask, other=0.0)
        w_mask = n_ok[:, None] & k_ok[None, :]
        wbyte = tl.load(w_ptr + rn[:, None].to(tl.int64) * KB + (rk // 8)[None, :], mask=w_mask, other=0)
        bit = (wbyte.to(tl.int32) >> (rk % 8)[None, :]) & 1
        w_sign = tl.where(w_mask, tl.where(bit == 1, 1.0, -1.0), 0.0).to(x.dtype)
        if BINARY_ACT:
            abs_sum += tl.sum(tl.abs(x.to(tl.float32)), axis=1)
            x = tl.where(x_mask, tl.where(x >= 0, 1.0, -1.0), 0.0).to(x.dtype)
        acc += tl.dot(x, tl.trans(w_sign), input_precision=INPUT_PRECISION)
    alpha = tl.load(alpha_ptr + rn, mask=n_ok, other=0.0)
    y = acc * alpha[None, :]
    if BINARY_ACT:
        beta = abs_sum * inv_k  # mean|x| over the K columns
        y = y * beta[:, None]
    if HAS_BIAS:
        y += tl.load(bias_ptr + rn, mask=n_ok, other=0.0)[None, :]
    y_mask = m_ok[:, None] & n_ok[None, :]
    tl.store(y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], y.to(y_ptr.dtype.element_ty), mask=y_mask)


def binary_linear(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    alpha: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    binary_activations: bool,
) -> torch.Tensor:
    """x: (M, K) contiguous float; packed_weight: (N, ceil(K/8)) uint8; returns (M, N) in x.dtype."""
    m, n = x.shape[0], packed_weight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    block_m = 16 if m <= 16 else BLOCK_M
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, BLOCK_N))
    _binary_linear_kernel[grid](
        x,
        packed_weight,
        alpha,
        bias if bias is not None else alpha,  # never read without HAS_BIAS
        y,
        m,
        n,
        in_features,
        packed_weight.shape[1],
        1.0 / max(in_features, 1),
        HAS_BIAS=bias is not None,
        BINARY_ACT=binary_activations,
        INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        BLOCK_M=block_m,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )
    return y
