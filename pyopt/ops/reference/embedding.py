"""embedding_int8 / embedding_bag_int8, pure torch: lookups in an int8 table with one float32 scale per row.

Storage (Int8Embedding / Int8EmbeddingBag, pyopt/nn/int8_embedding.py): weight_q int8 [num_embeddings, dim],
row_scales float32 [num_embeddings], the per-row symmetric rule of Int8Linear's weights (pyopt/_rules.py
quantize_rows_symmetric: scale = max|row| / 127, 1 for an all-zero row). A lookup dequantises only the rows
it reads: out[i] = float32(weight_q[idx[i]]) * row_scales[idx[i]] (one float32 rounding, the same value
dequantize_per_channel gives), then cast once to out_dtype.

embedding_bag_int8 reduces the dequantised rows of each bag exactly as torch.nn.functional.embedding_bag
does on a float table ("sum" with optional per_sample_weights, "mean", "max"; entries equal to padding_idx
are left out of their bag, an empty bag gives zeros), in float32, then casts once to out_dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import checks as C
from ..backends import reference


def _dequantized_rows(
    indices: torch.Tensor, weight_q: torch.Tensor, row_scales: torch.Tensor
) -> torch.Tensor:
    """float32 rows of the table at `indices` (flattened): only those rows are read and converted."""
    flat = indices.reshape(-1)
    return weight_q.index_select(0, flat).to(torch.float32) * row_scales.index_select(0, flat).unsqueeze(1)


@reference("embedding_int8")
def embedding_int8_ref(indices, weight_q, row_scales, out_dtype):
    C.check_embedding_int8(indices, weight_q, row_scales, out_dtype)
    rows = _dequantized_rows(indices, weight_q, row_scales)
    return rows.to(out_dtype).reshape(*indices.shape, weight_q.shape[1])


@reference("embedding_bag_int8")
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
    C.check_embedding_bag_int8(
        indices, offsets, weight_q, row_scales, per_sample_weights, mode, include_last_offset, padding_idx,
        out_dtype,
    )  # fmt: skip
    n = indices.shape[0]
    bags = offsets.shape[0] - (1 if include_last_offset else 0)
    if bags <= 0:  # no bag: torch 2.13's embedding_bag(mode="max") segfaults on empty offsets with indices
        return torch.zeros((0, weight_q.shape[1]), dtype=out_dtype, device=indices.device)
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
