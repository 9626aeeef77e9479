"""Triton kernels of the int8 layers (pyopt::int8_linear_dynamic, pyopt::int8_linear_weight_only).

dynamic:     one program per row quantises the activations (quantize_per_token's rule, round half to even
             via the 1.5*2^23 trick: no libdevice needed, so it runs in the interpreter), then an int8
             tl.dot GEMM (int32 accumulators) with the dequant epilogue fused: acc * sx * sw + bias.
weight_only: the int8 weight tile is converted to x's dtype inside the GEMM loop (never a float weight
             matrix in memory); fp32 accumulation; epilogue * sw + bias.
One config per shape class (default_config; the interpreter dislikes autotune); 64-wide tiles keep
interpreter tests quick.
K is a constexpr: a layer's in_features is fixed (one compile per layer shape), and the interpreter of
triton 3.6 with numpy 2.4 cannot loop to a runtime scalar bound (int() of a 1-element array).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# 1.5 * 2**23: (v + c) - c rounds |v| < 2**22 to the nearest integer, ties to even.
# A tl.constexpr because jit code may only read constexpr globals.
_RNE_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def _quant_rows_kernel(x_ptr, q_ptr, s_ptr, K: tl.constexpr, BLOCK_K: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * K
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(v))
    # div_rn: IEEE-rounded, as the reference; "/" may not be on the GPU
    scale = tl.math.div_rn(tl.max(amax, axis=0), 127.0)
    scale = tl.where(scale == 0.0, 1.0, scale)
    inv = tl.math.div_rn(1.0, scale)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32) * inv
        v = tl.minimum(tl.maximum(v, -127.0), 127.0)  # clamp to integers first: rounding stays in range
        r = (v + _RNE_MAGIC) - _RNE_MAGIC
        tl.store(q_ptr + row * K + offs, r.to(tl.int8), mask=offs < K)
    tl.store(s_ptr + row, scale)


@triton.jit
def _int8_gemm_kernel(
    a_ptr,  # [M, K] activations: int8 (DYNAMIC) or float
    w_ptr,  # [N, K] int8
    sx_ptr,  # [M] float32 row scales (DYNAMIC only)
    sw_ptr,  # [N] float32
    bias_ptr,  # [N] float32 (HAS_BIAS only)
    out_ptr,  # [M, N]
    M,
    N,
    K: tl.constexpr,
    DYNAMIC: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # 1-D grid in groups of GROUP_M row blocks: consecutive programs share a column block of w (and GROUP_M
    # row blocks of a), so the tiles they load are still in L2 (Triton's matmul tutorial ordering).
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    if DYNAMIC:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < K
        a = tl.load(
            a_ptr + offs_m[:, None] * K + ks[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0
        )
        w = tl.load(
            w_ptr + offs_n[None, :] * K + ks[:, None], mask=mask_n[None, :] & mask_k[:, None], other=0
        )
        if DYNAMIC:
            acc += tl.dot(a, w, out_dtype=tl.int32)
        elif IEEE_FP32:
            acc += tl.dot(a, w.to(a.dtype), input_precision="ieee")
        else:
            acc += tl.dot(a, w.to(a.dtype))
    out = acc.to(tl.float32)
    if DYNAMIC:
        out = out * tl.load(sx_ptr + offs_m, mask=mask_m, other=0.0)[:, None]
    out = out * tl.load(sw_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def quantize_rows(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 quantisation of a contiguous [M, K] tensor -> (q, float32 scales [M])."""
    M, K = x2d.shape
    q = torch.empty((M, K), dtype=torch.int8, device=x2d.device)
    s = torch.empty((M,), dtype=torch.float32, device=x2d.device)
    if M:
        block_k = min(1024, max(16, triton.next_power_of_2(max(K, 1))))
        _quant_rows_kernel[(M,)](x2d, q, s, K, BLOCK_K=block_k)
    return q, s


def default_config(M: int, N: int, device: torch.device) -> dict:
    """Tile sizes and launch options of _int8_gemm_kernel for an [M, K] x [N, K]^T problem on `device`.

    Interpreter (CPU): 64-wide tiles, fast to interpret. GPU: 128 x 128 tiles for large M; at small M
    (decode, M <= 64) the grid has only cdiv(N, BLOCK_N) programs, 32 for N = 4096 at BLOCK_N = 128 on a
    132-SM H100/H200 (the weight-only M=1 row ran at 0.58x bf16 there), so BLOCK_N shrinks until every SM
    has a program. bench/tune_int8_gpu.py sweeps the alternatives on a GPU.
    """
    block_m = 16 if M <= 16 else (64 if M <= 64 or device.type == "cpu" else 128)
    if device.type == "cpu":
        return dict(BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=64, GROUP_M=1, num_warps=4, num_stages=1)
    block_n = 128
    sms = torch.cuda.get_device_properties(device).multi_processor_count  # cached by torch
    while block_n > 16 and triton.cdiv(M, block_m) * triton.cdiv(N, block_n) < sms:
        block_n //= 2
    num_warps = 4 if block_m * block_n <= 64 * 128 else 8
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=64, GROUP_M=8, num_warps=num_warps, num_stages=3)


def _gemm(a, w_q, sx, w_scales, bias, out_dtype, dynamic: bool, config: dict | None = None) -> torch.Tensor:
    M, K = a.shape
    N = w_q.shape[0]
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.copy_(bias.expand(M, N) if bias is not None else torch.zeros_like(out))
    cfg = config or default_config(M, N, a.device)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _int8_gemm_kernel[grid](
        a,
        w_q,
        sx if sx is not None else w_scales,  # unused when not DYNAMIC
        w_scales,
        bias if bias is not None else w_scales,  # unused when not HAS_BIAS
        out,
        M,
        N,
        K,
        DYNAMIC=dynamic,
        HAS_BIAS=bias is not None,
        IEEE_FP32=a.dtype == torch.float32,
        **cfg,
    )
    return out


def int8_linear_dynamic(x2d, w_q, w_scales, bias, config: dict | None = None):
    q, sx = quantize_rows(x2d)
    return _gemm(q, w_q, sx, w_scales, bias, x2d.dtype, dynamic=True, config=config)


def int8_linear_weight_only(x2d, w_q, w_scales, bias, config: dict | None = None):
    return _gemm(x2d, w_q, None, w_scales, bias, x2d.dtype, dynamic=False, config=config)
