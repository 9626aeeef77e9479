"""pyopt.parallel's split rules in one process (no ranks): chunk bounds and compressed index pieces."""

import pytest
import torch

from pyopt._rules import to_bsr, to_csr
from pyopt.parallel import layouts


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_chunk_bounds_follow_dtensor_shard(world):
    for n in (0, 1, 2, 3, 7, 29, 1003):
        sizes = [len(c) for c in torch.arange(n).chunk(world)] if n else []
        sizes += [0] * (world - len(sizes))  # DTensor pads torch.chunk's missing pieces with empty ones
        assert [b - a for a, b in layouts.chunk_bounds(n, world)] == sizes
        assert layouts.chunk_bounds(n, world)[0][0] == 0 and layouts.chunk_bounds(n, world)[-1][1] == n


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("style", ["colwise", "rowwise"])
@pytest.mark.parametrize("fmt", ["csr", "bsr"])
def test_compressed_split_and_merge(world, style, fmt):
    """Each rank's piece is the CSR/BSR of its slice of the weight (built independently with the
    format's own constructor), and the pieces merge back into the original arrays exactly."""
    block = (2, 3) if fmt == "bsr" else (1, 1)
    n, k = 12 * block[0], 12 * block[1]
    weight = torch.randn(n, k)
    blocks = torch.rand(n // block[0], k // block[1]) > 0.5
    mask = (
        blocks.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
        if fmt == "bsr"
        else torch.rand(n, k) > 0.5
    )
    build = (lambda w, m: to_bsr(w, m, block)) if fmt == "bsr" else to_csr
    full = build(weight, mask)
    dim = 0 if style == "colwise" else 1
    bounds = layouts.chunk_bounds(weight.shape[dim], world)
    pieces = []
    for start, stop in bounds:
        p = layouts.Plan(style, {}, 0, 0, (start, stop), unit=block, compressed=True)
        piece = layouts.split_compressed(*full, p)
        sl = (slice(start, stop), slice(None)) if dim == 0 else (slice(None), slice(start, stop))
        want = build(weight[sl], mask[sl])
        for got, exp in zip(piece, want, strict=True):
            assert torch.equal(got, exp.to(got.dtype))
        pieces.append(piece)
    merged = layouts.merge_compressed(pieces, p, bounds)
    for got, exp in zip(merged, full, strict=True):
        assert torch.equal(got, exp)
