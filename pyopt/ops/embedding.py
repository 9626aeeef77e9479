"""embedding_int8 / embedding_bag_int8: lookups in an int8 table with one float32 scale per row.

Storage (Int8Embedding / Int8EmbeddingBag, pyopt/nn/int8_embedding.py): weight_q int8 [num_embeddings, dim],
row_scales float32 [num_embeddings], the per-row symmetric rule of Int8Linear's weights (pyopt/_rules.py
quantize_rows_symmetric: scale = max|row| / 127, 1 for an all-zero row). A lookup dequantises only the rows
it reads: out[i] = float32(weight_q[idx[i]]) * row_scales[idx[i]] (one float32 rounding, the same value
dequantize_per_channel gives), then cast once to out_dtype.

embedding_bag_int8 reduces the dequantised rows of each bag exactly as torch.nn.functional.embedding_bag
does on a float table ("sum" with optional per_sample_weights, "mean", "max"; entries equal to padding_idx
are left out of their bag, an empty bag gives zeros), in float32, then casts once to out_dtype.

Only the reference (pure torch) implementation exists so far; it serves every device. The checks below run
in the fake (metadata) and, with the data-dependent index checks, in the router before any implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._rules import FLOAT_DTYPES
from .backends import register

INDEX_DTYPES = (torch.int32, torch.int64)
BAG_MODES = ("sum", "mean", "max")


def _tensor(name: str, t, dtypes=None, ndim=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {tuple(str(d) for d in dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def _check_table(indices, weight_q, row_scales, out_dtype) -> None:
    _tensor("indices", indices, INDEX_DTYPES)
    _tensor("weight_q", weight_q, (torch.int8,), ndim=2)
    _tensor("row_scales", row_scales, (torch.float32,), ndim=1)
    if row_scales.shape[0] != weight_q.shape[0]:
        raise ValueError(
            f"row_scales must have one entry per row of weight_q ({weight_q.shape[0]}), got {row_scales.shape[0]}"
        )
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be one of {tuple(str(d) for d in FLOAT_DTYPES)}, got {out_dtype}")
    for name, t in (("weight_q", weight_q), ("row_scales", row_scales)):
        if t.device != indices.device:
            raise ValueError(f"{name} is on {t.device} but indices is on {indices.device}")


def _check_index_values(name: str, indices: torch.Tensor, num: int) -> None:
    """Data-dependent: every index in [0, num) (torch raises IndexError; a kernel must never read outside)."""
    if indices.numel() == 0:
        return
    lo, hi = torch.aminmax(indices)
    if lo.item() < 0 or hi.item() >= num:
        bad = lo.item() if lo.item() < 0 else hi.item()
        raise ValueError(f"{name} must be in [0, {num}) (the table's rows), got {bad}")


def check_embedding_int8_meta(indices, weight_q, row_scales, out_dtype) -> None:
    _check_table(indices, weight_q, row_scales, out_dtype)


def check_embedding_int8(indices, weight_q, row_scales, out_dtype) -> None:
    _check_table(indices, weight_q, row_scales, out_dtype)
    _check_index_values("indices", indices, weight_q.shape[0])


def check_embedding_bag_int8_meta(
    indices,
    offsets,
    weight_q,
    row_scales,
    per_sample_weights,
    mode,
    include_last_offset,
    padding_idx,
    out_dtype,
) -> None:
    _check_table(indices, weight_q, row_scales, out_dtype)
    _tensor("indices", indices, ndim=1)
    _tensor("offsets", offsets, INDEX_DTYPES, ndim=1)
    if offsets.device != indices.device:
        raise ValueError(f"offsets is on {offsets.device} but indices is on {indices.device}")
    if mode not in BAG_MODES:
        raise ValueError(f"mode must be one of {BAG_MODES}, got {mode!r}")
    if include_last_offset and offsets.shape[0] == 0:
        raise ValueError("offsets must hold at least one entry when include_last_offset=True")
    if padding_idx is not None and not -weight_q.shape[0] <= padding_idx < max(weight_q.shape[0], 1):
        raise ValueError(
            f"padding_idx must be in [{-weight_q.shape[0]}, {weight_q.shape[0]}), got {padding_idx}"
        )
    if per_sample_weights is not None:
        _tensor("per_sample_weights", per_sample_weights, FLOAT_DTYPES)
        if mode != "sum":
            raise ValueError(f"per_sample_weights is only supported for mode='sum', got mode={mode!r}")
        if per_sample_weights.shape != indices.shape:
            raise ValueError(
                f"per_sample_weights must have the shape of indices {tuple(indices.shape)}, "
                f"got {tuple(per_sample_weights.shape)}"
            )
        if per_sample_weights.device != indices.device:
            raise ValueError(
                f"per_sample_weights is on {per_sample_weights.device}, indices on {indices.device}"
            )


def check_embedding_bag_int8(
    indices,
    offsets,
    weight_q,
    row_scales,
    per_sample_weights,
    mode,
    include_last_offset,
    padding_idx,
    out_dtype,
) -> None:
    check_embedding_bag_int8_meta(
        indices, offsets, weight_q, row_scales, per_sample_weights, mode, include_last_offset, padding_idx,
        out_dtype,
    )  # fmt: skip
    _check_index_values("indices", indices, weight_q.shape[0])
    if offsets.numel():
        if offsets[0].item() != 0:
            raise ValueError(f"offsets[0] must be 0, got {offsets[0].item()}")
        if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
            raise ValueError("offsets must be non-decreasing")
        if offsets[-1].item() > indices.shape[0]:
            raise ValueError(
                f"offsets must be <= len(indices) = {indices.shape[0]}, got {offsets[-1].item()}"
            )
        if include_last_offset and offsets[-1].item() != indices.shape[0]:
            raise ValueError(
                f"with include_last_offset=True the last offset must be len(indices) = {indices.shape[0]}, "
                f"got {offsets[-1].item()}"
            )


def _dequantized_rows(
    indices: torch.Tensor, weight_q: torch.Tensor, row_scales: torch.Tensor
) -> torch.Tensor:
    """float32 rows of the table at `indices` (flattened): only those rows are read and converted."""
    flat = indices.reshape(-1)
    return weight_q.index_select(0, flat).to(torch.float32) * row_scales.index_select(0, flat).unsqueeze(1)


@register("embedding_int8", "reference")
def embedding_int8_ref(indices, weight_q, row_scales, out_dtype):
    rows = _dequantized_rows(indices, weight_q, row_scales)
    return rows.to(out_dtype).reshape(*indices.shape, weight_q.shape[1])


@register("embedding_bag_int8", "reference")
def embedding_bag_int8_ref(
    indices,
    offsets,
    weight_q,
    row_scales,
    per_sample_weights,
    mode,
    include_last_offset,
    padding_idx,
    out_dtype,
):
    n = indices.shape[0]
    rows = _dequantized_rows(indices, weight_q, row_scales)
    # torch's embedding_bag over the gathered rows: position i of the bag reads row i of `rows`; entries equal
    # to padding_idx point at an extra all-zero row that is the bag op's own padding_idx (left out of the bag
    # and of mean's count, as torch does with the float table).
    local = torch.arange(n, dtype=torch.int64, device=indices.device)
    pad = None
    if padding_idx is not None:
        pad_row = padding_idx % weight_q.shape[0]
        local = torch.where(indices == pad_row, torch.full_like(local, n), local)
        rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])
        pad = n
    psw = None if per_sample_weights is None else per_sample_weights.to(torch.float32)
    out = F.embedding_bag(
        local, rows, offsets.to(torch.int64), mode=mode, per_sample_weights=psw,
        include_last_offset=include_last_offset, padding_idx=pad,
    )  # fmt: skip
    return out.to(out_dtype)
