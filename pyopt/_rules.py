"""The rules every layer and backend of pyopt shares, in one bottom-layer module (it imports only torch).

- dtype sets and integer ranges the ops accept;
- the quantisation rules (rounding, qparam formulas) that every backend reproduces bit for bit;
- the storage formats: a masked dense weight as CSR / BSR / csr_int8, sign bits of a binary weight;
- the parameter-mask protocol that pruning, the sparse layers and FusedSGD share.

Rounding rules (measured against torch 2.13 on CPU, README "Quantize / dequantize"):

  per-tensor quantize   q = clamp(rne(fma(x, inv, zp)))          inv = 1.0f / float32(scale); NaN -> qmax
  per-channel/-group    q = clamp(rne(float32(x * inv) + zp))    the product is rounded first; NaN -> 0
  per-token             q = clamp(rne(float32(x * inv)), -127, 127), inv = 1.0f / (amax / 127)
  dequantize            (float32(q) - zp) * float32(scale)       per-channel: in float64, then rounded

rne = round half to even; all arithmetic in float32 (fp16/bf16 inputs are widened exactly first).
"""

from __future__ import annotations

import sys

import torch

# ----------------------------------------------------------------------------------------------------------
# dtypes and ranges
# ----------------------------------------------------------------------------------------------------------
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUANT_DTYPES = (torch.int8, torch.uint8)
QRANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255)}
SPARSE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
SGD_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOW_PRECISION = (torch.float16, torch.bfloat16)
F32_EPS = torch.finfo(torch.float32).eps  # torch.ao observers clamp scales to at least this


# ----------------------------------------------------------------------------------------------------------
# quantisation rules
# ----------------------------------------------------------------------------------------------------------
def fma_f32(x: torch.Tensor, inv: torch.Tensor, zp: torch.Tensor | float) -> torch.Tensor:
    """float32 fma(x, inv, zp) with a single rounding, in pure torch.

    x*inv is exact in float64 (24+24 bit significands); the sum is rounded to float64 with round-to-odd
    (TwoSum error term -> sticky bit), which makes the final rounding to float32 correct (53 >= 2*24+2).
    """
    p = x.double() * inv.double()
    z = torch.as_tensor(zp, dtype=torch.float64, device=x.device).expand_as(p)
    s = p + z
    b = s - p
    err = (p - (s - b)) + (z - b)
    odd = (s.view(torch.int64) | (err != 0).to(torch.int64)).view(torch.float64)
    return torch.where(torch.isfinite(s), odd, s).float()


def div_f32(a: torch.Tensor, b: float) -> torch.Tensor:
    """a / b in float32 as a true elementwise division on every device (CUDA turns a/scalar into a*(1/b))."""
    return a / torch.full_like(a, b)


def reciprocal_f32(s: torch.Tensor) -> torch.Tensor:
    """1.0f / s, correctly rounded (what torch's quantizers compute as the inverse scale)."""
    return torch.ones_like(s) / s


def canonical_nan(t: torch.Tensor) -> torch.Tensor:
    """NaN scales as the one quiet NaN 0x7fc00000 (every backend writes that one, whatever the input's NaN)."""
    return torch.where(torch.isnan(t), float("nan"), t)


def round_clamp(v: torch.Tensor, lo: int, hi: int, nan_value: int, dtype) -> torch.Tensor:
    v = torch.where(torch.isnan(v), float(nan_value), v)
    return v.round().clamp_(lo, hi).to(dtype)


def quantize_rounded_product(xf, inv, zp, lo, hi, dtype):
    """clamp(rne(float32(x * inv) + zp)): the per-channel / per-group / per-token rule; NaN -> 0."""
    return round_clamp(xf * inv + zp, lo, hi, 0, dtype)


def channel_view(t: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    """A per-channel vector shaped to broadcast along `axis` of an ndim-d tensor."""
    return t.reshape((-1,) + (1,) * (ndim - 1 - axis))


def qparams_from_minmax(mn, mx, dtype, symmetric: bool, reduce_range: bool = False):
    """torch.ao.quantization observers' _calculate_qparams (MinMax / PerChannelMinMax), float32 math.

    The range is widened to include 0; scales are at least float32 eps. Symmetric: scale = amax /
    ((qmax - qmin) / 2), zero point 0 (int8) or 128 (uint8). Affine: scale = (max - min) / (qmax - qmin),
    zp = clamp(qmin - rne(min / scale)). NaN in a min/max gives scale NaN and (affine) zero point 0.
    """
    qmin, qmax = QRANGE[dtype]
    if reduce_range:
        qmin, qmax = qmin // 2, qmax // 2
    min_neg = torch.minimum(mn, torch.zeros_like(mn))
    max_pos = torch.maximum(mx, torch.zeros_like(mx))
    eps = torch.full_like(mn, F32_EPS)
    if symmetric:
        scale = torch.maximum(div_f32(torch.maximum(-min_neg, max_pos), (qmax - qmin) / 2), eps)
        zp = torch.full(mn.shape, 128 if dtype == torch.uint8 else 0, dtype=torch.int64, device=mn.device)
    else:
        scale = torch.maximum(div_f32(max_pos - min_neg, float(qmax - qmin)), eps)
        zpf = qmin - torch.round(min_neg / scale)
        zp = torch.where(torch.isnan(zpf), 0.0, zpf).clamp(qmin, qmax).to(torch.int64)
    return canonical_nan(scale), zp


def per_token_scales(xf: torch.Tensor) -> torch.Tensor:
    """amax|x| / 127 per row of the last dim (float32, keepdim); 0 -> 1.0."""
    if xf.shape[-1] == 0:
        return torch.ones((*xf.shape[:-1], 1), device=xf.device)
    scales = div_f32(xf.abs().amax(-1, keepdim=True), 127.0)
    return canonical_nan(torch.where(scales == 0, 1.0, scales))


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token rule on the last dim: (q int8 of x's shape, scales float32 [..., 1])."""
    xf = x.float()
    scales = per_token_scales(xf)
    return quantize_rounded_product(xf, reciprocal_f32(scales), 0.0, -127, 127, torch.int8), scales


def quantize_rows_symmetric(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token rule on each row of a 2-d tensor -> (q int8, scales float32 [rows]).

    Int8Linear's per-channel weights and the dynamic ops' per-token activations both use it."""
    q, scales = quantize_per_token(v)
    return q, scales.reshape(v.shape[0])


def per_group_qparams(xf: torch.Tensor, group_size: int, dtype, symmetric: bool):
    """(scales, zero_points) of each group of the last dim: the observer rules on the group's min/max."""
    mn, mx = torch.aminmax(xf.reshape(*xf.shape[:-1], xf.shape[-1] // group_size, group_size), dim=-1)
    return qparams_from_minmax(mn, mx, dtype, symmetric)


# ----------------------------------------------------------------------------------------------------------
# sparse storage formats of a masked dense weight [N, K]
# ----------------------------------------------------------------------------------------------------------
def masked_weight(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """weight where mask, else 0. where(), not weight * mask: a pruned inf/nan weight must not leak."""
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def to_csr(weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow_indices int64, col_indices int16 if in_features < 2^15 else int32, values) of weight*mask.

    Every kept entry is stored (also a kept weight that happens to be 0), columns sorted within rows.
    """
    n, k = weight.shape
    rows, cols = mask.nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=n)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=weight.device)
    crow[1:] = counts.cumsum(0)
    col_dtype = torch.int16 if k <= torch.iinfo(torch.int16).max else torch.int32
    return crow, cols.to(col_dtype), weight[rows, cols].contiguous()


def csr_rows(crow_indices: torch.Tensor) -> torch.Tensor:
    """The row index of every stored entry of a CSR matrix."""
    counts = crow_indices[1:] - crow_indices[:-1]
    return torch.repeat_interleave(torch.arange(counts.shape[0], device=crow_indices.device), counts)


def dequantize_csr_int8(crow_indices, values, row_scales) -> torch.Tensor:
    """float32 values of a csr_int8 weight: w[j] = q[j] * scale[row(j)] (one float32 rounding each)."""
    return values.float() * row_scales[csr_rows(crow_indices)]


def quantize_csr_values(
    crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor, in_features: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 row_scales [N]) of a float CSR weight, same structure (crow / col unchanged).

    The rule of Int8Linear's per-channel weight quantiser (quantize_rows_symmetric): scale_n = max|w[n, :]|
    / 127 (1.0 for an all-zero row), q = clamp(rne(w * (1 / scale_n)), ±127). The rows are quantised as a
    zero-padded [N, longest row] matrix (the max over a padded row is the max over its kept weights; padding
    quantises to 0 and is dropped), not as the dense [N, K] weight.
    """
    n = crow_indices.shape[0] - 1
    counts = crow_indices[1:] - crow_indices[:-1]
    rows = csr_rows(crow_indices)
    pos = torch.arange(values.numel(), device=values.device) - crow_indices[:-1].repeat_interleave(counts)
    width = int(counts.max()) if n and values.numel() else 0
    padded = torch.zeros(n, width, dtype=torch.float32, device=values.device)
    padded[rows, pos] = values.float()
    q, scales = quantize_rows_symmetric(padded)
    return q[rows, pos].contiguous(), scales.float().contiguous()


def to_csr_int8(
    weight: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow_indices, col_indices, values int8, row_scales float32) of weight*mask: to_csr + int8 values."""
    crow, col, values = to_csr(weight, mask)
    q, scales = quantize_csr_values(crow, col, values, weight.shape[1])
    return crow, col, q, scales


def block_mask(mask: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """[N/bh, K/bw] bool: which (bh, bw) blocks hold any kept entry."""
    bh, bw = block
    n, k = mask.shape
    if bh <= 0 or bw <= 0 or n % bh or k % bw:
        raise ValueError(f"block {block} must divide the weight shape {(n, k)}")
    return mask.reshape(n // bh, bh, k // bw, bw).any(dim=3).any(dim=1)


def is_block_structured(mask: torch.Tensor, block: tuple[int, int]) -> bool:
    """Whether every (bh, bw) block of the mask is all kept or all pruned."""
    bh, bw = block
    n, k = mask.shape
    if n % bh or k % bw:
        return False
    blocks = mask.reshape(n // bh, bh, k // bw, bw)
    return bool((blocks.all(dim=3).all(dim=1) == blocks.any(dim=3).any(dim=1)).all())


def to_bsr(
    weight: torch.Tensor, mask: torch.Tensor, block: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow_indices int64, col_indices int32, values [nnz_blocks, bh, bw]) of weight*mask.

    Blocks with any kept entry are stored whole (pruned entries inside them as 0).
    """
    bh, bw = block
    n, k = weight.shape
    keep = block_mask(mask, block)
    brow, bcol = keep.nonzero(as_tuple=True)
    crow = torch.zeros(n // bh + 1, dtype=torch.int64, device=weight.device)
    crow[1:] = torch.bincount(brow, minlength=n // bh).cumsum(0)
    blocks = masked_weight(weight, mask).reshape(n // bh, bh, k // bw, bw).permute(0, 2, 1, 3)
    return crow, bcol.to(torch.int32), blocks[brow, bcol].contiguous()


# ----------------------------------------------------------------------------------------------------------
# binary weights: sign bits packed 8 per byte
# ----------------------------------------------------------------------------------------------------------
# Packed layout (every backend): `packed[n, j]` is a uint8 whose bit b (least significant first) is 1 iff
# `W[n, 8*j + b] >= 0` (sign(0) = +1). Each row holds ceil(K/8) bytes; the padding bits of the last byte are
# written as 0 and ignored by every kernel. XNOR-Net (Rastegari et al. 2016): W ~ alpha * sign(W) with
# alpha[n] = mean_k |W[n, k]|.
_BIT_VALUES = 1 << torch.arange(8, dtype=torch.int32)  # LSB first


def pack_signs(w: torch.Tensor) -> torch.Tensor:
    """(..., K) float -> (..., ceil(K/8)) uint8 of sign bits (1 iff w >= 0), padding bits 0."""
    k = w.shape[-1]
    bits = (w >= 0).to(torch.int32)
    pad = (-k) % 8
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*w.shape[:-1], (k + pad) // 8, 8)
    return (bits * _BIT_VALUES.to(w.device)).sum(-1).to(torch.uint8)


def unpack_signs(packed: torch.Tensor, in_features: int, dtype=torch.float32) -> torch.Tensor:
    """(..., ceil(K/8)) uint8 -> (..., K) tensor of +1/-1 (the inverse of pack_signs on signs)."""
    bits = (packed.to(torch.int32).unsqueeze(-1) & _BIT_VALUES.to(packed.device)) != 0
    bits = bits.reshape(*packed.shape[:-1], packed.shape[-1] * 8)[..., :in_features]
    one = torch.ones((), dtype=dtype, device=packed.device)
    return torch.where(bits, one, -one)


def binarize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float weight -> (packed sign bits (N, ceil(K/8)) uint8, alpha = mean|W| per row, float32)."""
    w = weight.detach().float()
    alpha = w.abs().mean(1) if w.shape[1] > 0 else w.new_zeros(w.shape[0])
    return pack_signs(w), alpha.contiguous()


# ----------------------------------------------------------------------------------------------------------
# parameter masks: a bool mask attached to a parameter (pruning, SparseLinear/SparseConv2d, FusedSGD)
# ----------------------------------------------------------------------------------------------------------
# The module owning the mask keeps it as a buffer (so it is saved and moved with the module) and calls
# set_param_mask again whenever the buffer object changes (e.g. after .to(), load_state_dict). FusedSGD
# keeps masked-out entries of the parameter and of its momentum buffer exactly zero, inside its fused pass.
# A sharded parameter (a DTensor: FSDP2, tensor parallel) gets its mask sharded the same way, so that each
# rank's optimizer masks its own shard without communication.
MASK_ATTR = "_pyopt_mask"


def set_param_mask(param: torch.Tensor, mask: torch.Tensor | None) -> None:
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
        if mask.shape != param.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != parameter shape {tuple(param.shape)}")
        mask = _shard_like(param, mask)
    setattr(param, MASK_ATTR, mask)


def _shard_like(param: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`mask` (the full tensor, on every rank) as a DTensor laid out like the DTensor `param`; cut locally
    (src_data_rank=None: no communication). Anything else is returned unchanged."""
    dt = sys.modules.get("torch.distributed.tensor")  # no DTensor exists unless torch imported it
    if dt is None or not isinstance(param, dt.DTensor):
        return mask
    if isinstance(mask, dt.DTensor):
        if mask.placements != param.placements:
            mask = mask.redistribute(param.device_mesh, param.placements)
        return mask
    return dt.distribute_tensor(mask, param.device_mesh, param.placements, src_data_rank=None)


def get_param_mask(param: torch.Tensor) -> torch.Tensor | None:
    return getattr(param, MASK_ATTR, None)
