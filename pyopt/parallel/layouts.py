"""How each pyopt layer splits for tensor parallelism: which tensors are cut along which dimension.

A column-wise split (`"colwise"`) gives each rank a slice of the output features, a row-wise split
(`"rowwise"`) a slice of the input features — of y = x W^T + b with W [out_features, in_features], torch's
ColwiseParallel / RowwiseParallel meaning. Each rank's slice follows DTensor's `Shard` rule (torch.chunk:
ceil(n / world) per rank, the last ones shorter), so that a DTensor input or output of torch's own styles
lines up with it. What must be cut together:

  Int8Linear    int8 weight + its per-output-channel scales (colwise: both; rowwise: the weight only, each
                scale covers its whole row on every rank); per-token activation scales stay local to each
                rank (rowwise: each rank quantises its own slice of x);
  BinaryLinear  the packed sign bits (8 weights per byte: a rowwise cut must fall on a byte) + alpha;
  SparseLinear  masked: weight + mask (the mask stays with its weight, for FusedSGD); dense: weight;
                csr / csr_int8 / bsr: the index structures are re-based per rank (crow_indices restart at
                0, col_indices count from the rank's first column); bsr cuts must fall on block edges;
                csr_int8's per-row scales go with their rows.
Tensors whose slices are plain chunks are kept as DTensors (state_dict, torch.distributed.checkpoint and
optimizers see global shapes); the index structures of csr / bsr, whose per-rank sizes depend on the data,
are kept as this rank's local CSR (see pyopt/parallel/styles.py for how they are checkpointed).
"""

from __future__ import annotations

import dataclasses

import torch
from torch.distributed.tensor import Replicate, Shard

from ..nn import BinaryLinear, Int8Linear, SparseLinear

COLWISE, ROWWISE = "colwise", "rowwise"
INDEX_BUFFERS = ("crow_indices", "col_indices", "values")  # csr / csr_int8 / bsr: per-rank local pieces
COMPRESSED = ("csr", "csr_int8", "bsr")


class ShardingError(ValueError):
    """A layer, mesh or placement pyopt cannot shard; the message names the layer and the reason."""


def describe(module: torch.nn.Module, name: str | None = None) -> str:
    """'fc1' (SparseLinear, format=bsr, block=(4, 4), 64 -> 32) for error messages."""
    parts = [type(module).__name__]
    fmt = getattr(module, "format", None)
    if isinstance(fmt, str):
        parts.append(f"format={fmt}")
    if getattr(module, "block", None):
        parts.append(f"block={tuple(module.block)}")
    if hasattr(module, "in_features"):
        parts.append(f"{module.in_features} -> {module.out_features}")
    what = ", ".join(parts)
    return f"layer {name!r} ({what})" if name else f"layer ({what})"


def chunk_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """[start, stop) of each rank's slice of n items: DTensor's Shard rule (torch.chunk sizes)."""
    size = -(-n // world) if n else 0
    return [(min(r * size, n), min((r + 1) * size, n)) for r in range(world)]


@dataclasses.dataclass
class Plan:
    """The split of one layer: placements of the tensors kept as DTensors, the local feature counts, and
    whether the bias is added after the row-wise reduction (once, not once per rank)."""

    style: str
    placements: dict[str, object]  # tensor name -> Shard(0) / Shard(1) / Replicate()
    in_local: int
    out_local: int
    bounds: tuple[int, int]  # this rank's [start, stop) along the split dimension
    unit: tuple[int, int] = (1, 1)  # (rows, cols) per stored entry of the index structures (bsr: block)
    compressed: bool = False
    bias_after_reduce: bool = False


def _check_cuts(what: str, bounds, n: int, step: int, why: str, style: str, world: int) -> None:
    for start, _ in bounds:
        if start % step and start < n:
            raise ShardingError(
                f"a {style} split over {world} ranks cuts {what} at {start}, not a multiple of {step} ({why})"
            )


def plan(module: torch.nn.Module, style: str, world: int, rank: int) -> Plan:
    """The split of `module` for `style` on `world` ranks; ShardingError (without the layer's name, which
    the caller adds) when it cannot be split that way."""
    if style not in (COLWISE, ROWWISE):
        raise ShardingError(f"style must be {COLWISE!r} or {ROWWISE!r}, got {style!r}")
    if isinstance(module, Int8Linear):
        names = {"weight": (0, 1), "weight_scales": (0, None), "bias": (0, None)}
        step, why = 1, ""
    elif isinstance(module, BinaryLinear):
        names = {"packed_weight": (0, 1), "alpha": (0, None), "bias": (0, None)}
        step, why = 8, "the sign bits are packed 8 per byte"
    elif isinstance(module, SparseLinear):
        fmt = module.format
        if fmt == "masked":
            names = {"weight": (0, 1), "mask": (0, 1), "bias": (0, None)}
        elif fmt == "dense":
            names = {"weight": (0, 1), "bias": (0, None)}
        elif fmt in COMPRESSED:
            names = {"row_scales": (0, None), "bias": (0, None)} if fmt == "csr_int8" else {"bias": (0, None)}
        else:
            raise ShardingError(
                f"format {fmt!r} has no tensor-parallel split in pyopt (2:4 runs torch's semi-structured "
                "kernels on CUDA only); keep the layer replicated or shard it with fully_shard"
            )
        step, why = 1, ""
    else:
        raise ShardingError(
            f"{type(module).__name__} has no tensor-parallel split in pyopt (Int8Linear, BinaryLinear, "
            "SparseLinear and torch's nn.Linear / nn.Embedding do); keep it replicated or shard it with "
            "pyopt.parallel.fully_shard"
        )
    n_out, n_in = module.out_features, module.in_features
    unit = tuple(module.block) if getattr(module, "format", None) == "bsr" else (1, 1)
    dim = 0 if style == COLWISE else 1
    total = n_out if dim == 0 else n_in
    bounds = chunk_bounds(total, world)
    if dim == 1:
        _check_cuts("in_features", bounds, total, step, why, style, world)
    if unit != (1, 1):
        edge = unit[dim]
        side = "out_features (block rows)" if dim == 0 else "in_features (block columns)"
        _check_cuts(
            side, bounds, total, edge, f"its {unit[0]}x{unit[1]} blocks must stay whole", style, world
        )
    if isinstance(module, BinaryLinear) and dim == 1:
        # the bytes are split by the same chunk rule: it must give the same cut points as the bits
        byte_bounds = chunk_bounds(module.packed_weight.shape[1], world)
        if any(min(8 * b0, n_in) != k0 for (b0, _), (k0, _) in zip(byte_bounds, bounds, strict=True)):
            raise ShardingError(
                f"a rowwise split of in_features={n_in} over {world} ranks does not fall on the packed "
                "bytes (8 sign bits each): use an in_features whose per-rank slice is a multiple of 8"
            )
    placements = {}
    for name, (col_dim, row_dim) in names.items():
        if getattr(module, name, None) is None:
            continue
        d = col_dim if dim == 0 else row_dim
        placements[name] = Replicate() if d is None else Shard(d)
    start, stop = bounds[rank]
    local = stop - start
    return Plan(
        style=style,
        placements=placements,
        in_local=n_in if dim == 0 else local,
        out_local=local if dim == 0 else n_out,
        bounds=(start, stop),
        unit=unit,
        compressed=getattr(module, "format", None) in COMPRESSED,
        bias_after_reduce=dim == 1 and getattr(module, "bias", None) is not None,
    )


# --------------------------------------------------------------------- compressed (csr / bsr) index pieces
def _entry_rows(crow: torch.Tensor) -> torch.Tensor:
    counts = crow[1:] - crow[:-1]
    return torch.repeat_interleave(torch.arange(counts.shape[0], device=crow.device), counts)


def split_compressed(crow, col, values, p: Plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's local CSR/BSR (re-based indices) of the global one, for the plan's [start, stop)."""
    bh, bw = p.unit
    start, stop = p.bounds
    if p.style == COLWISE:  # whole rows (block rows): a contiguous range of the stored entries
        r0, r1 = start // bh, stop // bh
        lo, hi = int(crow[r0]), int(crow[r1])
        return (crow[r0 : r1 + 1] - lo).contiguous(), col[lo:hi].clone(), values[lo:hi].clone()
    c0, c1 = start // bw, stop // bw
    keep = (col >= c0) & (col < c1)
    rows = _entry_rows(crow)[keep]
    local_crow = torch.zeros_like(crow)
    local_crow[1:] = torch.bincount(rows, minlength=crow.shape[0] - 1).cumsum(0)
    return local_crow, (col[keep] - c0).to(col.dtype), values[keep].contiguous()


def merge_compressed(pieces, p: Plan, bounds_all) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global CSR/BSR from every rank's (crow, col, values), inverse of split_compressed: the stored
    entries come back in their original order (rows, then columns within a row), values untouched."""
    bh, bw = p.unit
    if p.style == COLWISE:
        crows, offset = [pieces[0][0][:1]], 0
        for crow, _, _ in pieces:
            crows.append(crow[1:] + offset)
            offset += int(crow[-1])
        cols = torch.cat([c for _, c, _ in pieces])
        return torch.cat(crows), cols, torch.cat([v for _, _, v in pieces])
    rows, cols, vals = [], [], []
    for (crow, col, v), (start, _) in zip(pieces, bounds_all, strict=True):
        rows.append(_entry_rows(crow))
        cols.append(col.to(torch.int64) + start // bw)
        vals.append(v)
    row, colg, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    order = torch.argsort(row * (max(int(colg.max()) + 1, 1) if colg.numel() else 1) + colg, stable=True)
    n_rows = pieces[0][0].shape[0] - 1
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=row.device)
    crow[1:] = torch.bincount(row, minlength=n_rows).cumsum(0)
    return crow, colg[order].to(pieces[0][1].dtype), val[order].contiguous()
