"""Fuzz targets of the int8 embeddings: embedding_int8 / embedding_bag_int8 on every backend this machine has
(at present only the pure-torch kernel implements them: it is what every device runs) against a float64 oracle
written here (one dequantised row per index, bags reduced in a Python loop); bad indices, offsets and
arguments refused with the exception type naming the argument. Settings and helpers: tests/fuzz_strategies.py."""

import pytest
import torch
from fuzz_strategies import (
    ISAS,
    assert_all_raise,
    assert_close_scaled,
    assert_exact,
    cpu_backends,
    fuzz,
    given,
    layouts,
    relayout,
    st,
)

import pyopt
from pyopt._rules import FLOAT_DTYPES

OPS = torch.ops.pyopt


@st.composite
def tables(draw):
    rows, dim = draw(st.integers(1, 60)), draw(st.sampled_from([1, 2, 3, 7, 8, 16, 33, 64, 129]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    wq = torch.randint(-128, 128, (rows, dim), generator=g, dtype=torch.int8)
    scales = (torch.rand(rows, generator=g) + 1e-3) * draw(st.sampled_from([1.0, 1e-30, 1e30, 0.01]))
    return relayout(wq, draw(layouts(allow_expanded=False))), scales, g


def run_all(op, *args):
    """op(*args) on every backend of `op` usable on CPU (and every ISA for the C++ one): all results equal."""
    results = []
    for backend in cpu_backends(op):
        for isa in ISAS if backend == "cpu" else ISAS[:1]:
            with pyopt.use_backend(backend), pyopt.use_isa(isa):
                results.append(getattr(OPS, op)(*args))
    for r in results[1:]:
        assert_exact(r, results[0], op)
    return results[0]


@fuzz(150)
@given(t=tables(), shape=st.lists(st.integers(0, 9), max_size=3), idx_dtype=st.sampled_from([torch.int64, torch.int32]),
       out_dtype=st.sampled_from(FLOAT_DTYPES), layout=layouts())  # fmt: skip
def test_fuzz_embedding_int8(t, shape, idx_dtype, out_dtype, layout):
    wq, scales, g = t
    idx = relayout(torch.randint(0, wq.shape[0], shape, generator=g).to(idx_dtype), layout)
    got = run_all("embedding_int8", idx, wq, scales, out_dtype)
    want = (wq.double()[idx.long()] * scales.double()[idx.long()].unsqueeze(-1)).float().to(out_dtype)
    assert_exact(got, want)


@st.composite
def bags(draw):
    wq, scales, g = draw(tables())
    n = draw(st.integers(0, 40))
    idx = torch.randint(0, wq.shape[0], (n,), generator=g)
    nbags = draw(st.integers(0, 8))
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=nbags, max_size=nbags)))
    last = draw(st.booleans())
    if last:
        cuts = [0, *cuts[1:], n] if cuts else [0, n]
    elif cuts:
        cuts[0] = 0
    mode = draw(st.sampled_from(["sum", "mean", "max"]))
    psw = None
    if mode == "sum" and draw(st.booleans()):
        psw = torch.randn(n, generator=g).to(draw(st.sampled_from(FLOAT_DTYPES)))
    pad = draw(st.one_of(st.none(), st.integers(-wq.shape[0], wq.shape[0] - 1)))
    idx_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    off = torch.tensor(cuts, dtype=torch.int64).to(draw(st.sampled_from([torch.int64, torch.int32])))
    return idx.to(idx_dtype), off, wq, scales, psw, mode, last, pad, draw(st.sampled_from(FLOAT_DTYPES))


def bag_oracle(idx, off, wq, scales, psw, mode, last, pad, out_dtype):
    """torch.nn.functional.embedding_bag's semantics, in float64, one bag at a time."""
    rows = (wq.float() * scales.unsqueeze(1)).double()  # the float32 dequantised table
    ends = off.tolist()[1:] + ([] if last or not off.numel() else [idx.shape[0]])
    starts = off.tolist()[: len(ends)]
    out, mag = (
        torch.zeros(len(ends), wq.shape[1], dtype=torch.float64),
        torch.zeros(len(ends), wq.shape[1], dtype=torch.float64),
    )
    pad_row = None if pad is None else pad % wq.shape[0]
    for b, (s, e) in enumerate(zip(starts, ends, strict=True)):
        keep = [i for i in range(s, e) if int(idx[i]) != pad_row]
        if not keep:
            continue
        terms = rows[idx[keep].long()]
        if psw is not None:
            terms = terms * psw.double()[keep].unsqueeze(1)
        if mode == "max":
            out[b] = terms.max(0).values
        else:
            out[b] = terms.sum(0) / (len(keep) if mode == "mean" else 1)
            mag[b] = terms.abs().sum(0) / (len(keep) if mode == "mean" else 1)
    return out, mag


@fuzz(200)
@given(args=bags())
def test_fuzz_embedding_bag_int8(args):
    got = run_all("embedding_bag_int8", *args)
    want, mag = bag_oracle(*args)
    out_dtype = args[-1]
    assert_close_scaled(got, want.to(out_dtype), mag, out_dtype, "embedding_bag_int8", rtol_mult=4.0)


@st.composite
def bad_embedding_calls(draw):
    rows, dim = draw(st.integers(1, 9)), draw(st.integers(1, 5))
    wq, scales = torch.randint(-128, 128, (rows, dim), dtype=torch.int8), torch.ones(rows)
    idx = torch.randint(0, rows, (draw(st.integers(1, 12)),))
    off = torch.tensor([0, idx.shape[0] // 2])
    what = draw(
        st.sampled_from(["idx_high", "idx_neg", "idx_float", "w_dtype", "w_1d", "scales_shape", "scales_dtype",
                         "out_dtype", "off_start", "off_decreasing", "off_high", "mode", "psw_mode", "psw_shape",
                         "pad", "last_empty"])
    )  # fmt: skip
    bag = what.startswith(("off", "mode", "psw", "pad", "last")) or draw(st.booleans())
    psw, mode, last, pad, out_dtype = None, "sum", False, None, torch.float32
    exc, name = ValueError, "indices"
    if what == "idx_high":
        idx = idx.clone()
        idx[draw(st.integers(0, idx.shape[0] - 1))] = rows + draw(st.sampled_from([0, 1, 2**40]))
    elif what == "idx_neg":
        idx = idx.clone()
        idx[0] = draw(st.sampled_from([-1, -rows, -(2**40)]))
    elif what == "idx_float":
        idx, exc = idx.float(), TypeError
    elif what == "w_dtype":
        wq, exc, name = wq.to(draw(st.sampled_from([torch.uint8, torch.float32]))), TypeError, "weight_q"
    elif what == "w_1d":
        wq, name = wq.reshape(-1), "weight_q"
    elif what == "scales_shape":
        scales, name = torch.ones(rows + 1), "row_scales"
    elif what == "scales_dtype":
        scales, exc, name = scales.double(), TypeError, "row_scales"
    elif what == "out_dtype":
        out_dtype, exc, name = draw(st.sampled_from([torch.int32, torch.float64])), TypeError, "out_dtype"
    elif what == "off_start":
        off, name = torch.tensor([1, idx.shape[0]]), "offsets"
    elif what == "off_decreasing":
        off, name = torch.tensor([0, idx.shape[0], 0]), "offsets"
    elif what == "off_high":
        off, name = torch.tensor([0, idx.shape[0] + 1]), "offsets"
    elif what == "mode":
        mode, name = draw(st.sampled_from(["min", "SUM", ""])), "mode"
    elif what == "psw_mode":
        psw, mode, name = (
            torch.ones(idx.shape[0]),
            draw(st.sampled_from(["mean", "max"])),
            "per_sample_weights",
        )
    elif what == "psw_shape":
        psw, name = torch.ones(idx.shape[0] + 1), "per_sample_weights"
    elif what == "pad":
        pad, name = draw(st.sampled_from([rows, -rows - 1])), "padding_idx"
    else:
        off, last, name = torch.zeros(0, dtype=torch.int64), True, "offsets"
    if bag:
        args = (idx, off, wq, scales, psw, mode, last, pad, out_dtype)
        return "embedding_bag_int8", lambda: OPS.embedding_bag_int8(*args), exc, name
    return "embedding_int8", lambda: OPS.embedding_int8(idx, wq, scales, out_dtype), exc, name


@fuzz(150)
@given(bad=bad_embedding_calls())
def test_fuzz_embedding_bad_inputs_raise_alike(bad):
    assert_all_raise(*bad)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("last", [False, True])
def test_embedding_bag_without_bags_is_empty(mode, last):
    """No bag (empty offsets, or only the last offset) with indices present: an empty [0, dim] result. torch
    2.13's embedding_bag(mode="max") segfaults on this input; the reference kernel must not reach it."""
    wq, scales = torch.randint(-128, 128, (5, 4), dtype=torch.int8), torch.ones(5)
    idx = torch.arange(0 if last else 5)  # (with include_last_offset, offsets [0] ends at len(indices))
    off = torch.tensor([0]) if last else torch.zeros(0, dtype=torch.int64)
    got = run_all("embedding_bag_int8", idx, off, wq, scales, None, mode, last, None, torch.float32)
    assert got.shape == (0, 4) and got.dtype == torch.float32
