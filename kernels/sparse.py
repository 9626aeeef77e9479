"""Triton block-sparse (BSR) linear: y = x W^T + b with W stored as (bh, bw) blocks.

One program computes a [BLOCK_M, bh] tile of y: it walks the nonzero blocks of block row I (crow_indices),
loads the matching [BLOCK_M, bw] slice of x and accumulates x_slice @ block^T with tl.dot in float32.
Empty block rows cost one store. bh and bw must be powers of two >= 16 (tl.dot's minimum); other shapes
use the reference. Tested under TRITON_INTERPRET=1 on CPU tensors with 64x64 blocks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _bsr_linear_kernel(
    x_ptr, crow_ptr, col_ptr, values_ptr, bias_ptr, y_ptr,
    M, K, N,
    HAS_BIAS: tl.constexpr, IEEE_FP32: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    block_row = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rh = tl.arange(0, BH)
    rw = tl.arange(0, BW)
    start = tl.load(crow_ptr + block_row)
    end = tl.load(crow_ptr + block_row + 1)
    acc = tl.zeros((BLOCK_M, BH), dtype=tl.float32)
    b = start
    while b < end:  # not range(start, end): the interpreter cannot index with a loaded scalar (numpy 2)
        bcol = tl.load(col_ptr + b).to(tl.int64)
        x = tl.load(
            x_ptr + rm[:, None].to(tl.int64) * K + bcol * BW + rw[None, :], mask=rm[:, None] < M, other=0.0
        )
        blk = tl.load(values_ptr + b.to(tl.int64) * (BH * BW) + rh[:, None] * BW + rw[None, :])
        # fp16/bf16: tensor-core dot in the input dtype, float32 accumulation; float32: exact IEEE products
        # (tl.dot's default would be TF32, which torch's own fp32 matmul does not use by default)
        if IEEE_FP32:
            acc += tl.dot(x, tl.trans(blk.to(x.dtype)), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(blk.to(x.dtype)))
        b += 1
    rn = block_row * BH + rh
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn).to(tl.float32)[None, :]
    tl.store(
        y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=rm[:, None] < M,
    )


def _pow2_at_least_16(v: int) -> bool:
    return v >= 16 and v & (v - 1) == 0


def bsr_linear(x, crow_indices, col_indices, values, bias, out_features):
    """x: [M, K] contiguous; values [nnz_blocks, bh, bw]; returns [M, out_features] in x.dtype."""
    m, k = x.shape
    bh, bw = values.shape[1], values.shape[2]
    if (
        not (_pow2_at_least_16(bh) and _pow2_at_least_16(bw))
        or m == 0
        or out_features == 0
        or x.dtype not in (torch.float32, torch.float16, torch.bfloat16)
    ):
        from ..ops.reference.sparse import bsr_linear_ref

        return bsr_linear_ref(x, crow_indices, col_indices, values, bias, out_features)
    y = torch.empty((m, out_features), dtype=x.dtype, device=x.device)
    block_m = 128 if m >= 512 and x.device.type == "cuda" else 64
    grid = (triton.cdiv(m, block_m), out_features // bh)
    _bsr_linear_kernel[grid](
        x, crow_indices.contiguous(), col_indices.contiguous(), values.contiguous(),
        bias if bias is not None else values, y,
        m, k, out_features,
        HAS_BIAS=bias is not None, IEEE_FP32=x.dtype == torch.float32, BH=bh, BW=bw, BLOCK_M=block_m,
    )  # fmt: skip
    return y
