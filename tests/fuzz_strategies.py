"""Shared pieces of the fuzz targets (tests/test_fuzz_<stem>.py): settings, tensor values, layouts, comparisons.

Each target draws shapes, dtypes, layouts, values and op arguments with hypothesis, runs the C++ kernel on every
ISA tier this CPU has (pyopt.use_isa) and compares it with the reference backend; a second target per family
draws bad arguments and checks that every backend raises the same exception type naming the argument.

Tensor contents are not drawn element by element (slow, and shrinking a 4000-element tensor helps nobody): a
target draws a seed, a value kind and a few special values with their positions, and torch generates the
rest, so every example is reproducible from what hypothesis prints.

Budget: `make test` runs each target with its default example count, derandomized (the same examples on every
run: no flaky failures). Long campaigns:

    PYOPT_FUZZ_EXAMPLES=3000 PYOPT_FUZZ_SEED=7 .venv/bin/python -m pytest tests/test_fuzz_*.py

PYOPT_FUZZ_EXAMPLES sets every target's example count; PYOPT_FUZZ_SEED switches to random generation from that
seed (a failure prints the seed and a @reproduce_failure blob).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import backend_params, isa_params
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import pyopt
from pyopt.ops import backends

EXAMPLES = int(os.environ.get("PYOPT_FUZZ_EXAMPLES", "0"))  # 0: each target's default
SEED = os.environ.get("PYOPT_FUZZ_SEED")
ISAS = [p.values[0] for p in isa_params()]


def fuzz(default_examples: int):
    """Decorator: hypothesis settings of a fuzz target (deterministic unless PYOPT_FUZZ_SEED is set)."""
    cfg = settings(
        max_examples=EXAMPLES or default_examples,
        deadline=None,  # timings on a shared 2-core machine vary; a slow example is not a failure
        derandomize=SEED is None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )

    def deco(fn):
        fn = cfg(fn)
        return seed(int(SEED))(fn) if SEED is not None else fn

    return deco


__all__ = ["given", "st", "fuzz", "ISAS"]

# ----------------------------------------------------------------------------------------------------------
# sizes and values
# ----------------------------------------------------------------------------------------------------------
SPECIALS = (math.nan, math.inf, -math.inf, 3e38, -3e38, 6e4, -6e4, 1e-45, -1e-45, 1e-30, -0.0, 0.0)


def dims(max_size: int = 67) -> st.SearchStrategy[int]:
    """A dimension: 0, 1, small odd/even sizes, tile edges (15..17, 31..33, 63..65), up to max_size."""
    edges = [
        s for s in (0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129) if s <= max_size
    ]
    return st.one_of(st.sampled_from(edges), st.integers(0, max_size))


def features(max_size: int = 3000) -> st.SearchStrategy[int]:
    """An in_features / K: mostly small with tails of every SIMD width, sometimes up to a few thousand."""
    return st.one_of(
        st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129]),
        st.integers(1, 300),
        st.integers(1, max_size),
    )


VALUE_KINDS = ("normal", "normal", "normal", "wide", "huge", "tiny", "zeros", "equal_rows", "ints", "halves")


@st.composite
def value_specs(draw, specials: bool = True):
    """How to fill a tensor: (seed, kind, scale, [(position fraction, special value)])."""
    kind = draw(st.sampled_from(VALUE_KINDS))
    scale = draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3, 0.37]))
    marks = []
    if specials and draw(st.integers(0, 3)) == 0:
        marks = draw(
            st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(SPECIALS)), max_size=3)
        )
    return draw(st.integers(0, 2**31 - 1)), kind, scale, marks


def fill(shape, dtype, spec) -> torch.Tensor:
    """A contiguous tensor of `shape` / `dtype` filled as `spec` (from value_specs) says."""
    s, kind, scale, marks = spec
    g = torch.Generator().manual_seed(s)
    n = math.prod(shape)
    if kind == "zeros":
        v = torch.zeros(n, dtype=torch.float64)
    elif kind == "equal_rows":  # every row of the last dim one value (amax of the row = |every entry|)
        last = shape[-1] if shape else 1
        rows = torch.randn(max(n // max(last, 1), 1), 1, generator=g, dtype=torch.float64)
        v = rows.expand(-1, max(last, 1)).reshape(-1)[:n]
    elif kind == "ints":
        v = torch.randint(-130, 131, (n,), generator=g).double()
    elif kind == "halves":  # exact ties of x / scale for power-of-two scales
        v = (torch.randint(-300, 301, (n,), generator=g).double() + 0.5) / 4
    else:
        v = torch.randn(n, generator=g, dtype=torch.float64)
        if kind == "wide":  # magnitudes over many binades in one tensor
            v = v * torch.pow(10.0, torch.randint(-8, 9, (n,), generator=g).double())
        elif kind == "huge":
            v = v * 1e37
        elif kind == "tiny":
            v = v * 1e-39
    v = (v * scale).to(dtype)
    for frac, special in marks:
        if n:
            v[int(frac * n)] = special
    return v.reshape(shape)


@st.composite
def float_tensors(draw, shape, dtype, specials: bool = True):
    return fill(tuple(shape), dtype, draw(value_specs(specials)))


# ----------------------------------------------------------------------------------------------------------
# layouts: the same values with other strides
# ----------------------------------------------------------------------------------------------------------
LAYOUTS = ("contiguous", "contiguous", "transposed", "strided", "offset", "reversed_dims", "expanded")


def relayout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """t's values (for "expanded": those of t[:1], broadcast) with the strides `kind` names."""
    if kind == "contiguous" or t.dim() == 0:
        return t.contiguous()
    if kind == "transposed" and t.dim() >= 2:  # column-major last two dims
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "strided":  # every other element of a twice-wider last dim
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype)
        big[..., 1::2] = t
        return big[..., 1::2]
    if kind == "offset":  # a view that does not start at its storage's first element
        flat = torch.zeros(t.numel() + 5, dtype=t.dtype)
        out = flat[5:].view(t.shape)
        out.copy_(t)
        return out
    if kind == "reversed_dims":  # every dim's stride order reversed
        perm = list(range(t.dim()))[::-1]
        return t.permute(perm).contiguous().permute(perm)
    if kind == "expanded" and t.shape[0] > 0:  # stride 0 on the first dim
        return t[:1].expand(t.shape)
    return t.contiguous()


def layouts(allow_expanded: bool = True) -> st.SearchStrategy[str]:
    return st.sampled_from([k for k in LAYOUTS if allow_expanded or k != "expanded"])


# ----------------------------------------------------------------------------------------------------------
# running and comparing
# ----------------------------------------------------------------------------------------------------------
def run_ref(fn, *args, **kwargs):
    """fn() on the reference backend with contiguous copies of every tensor argument."""

    def copy(a):
        if isinstance(a, torch.Tensor):
            return a.contiguous().clone()
        if isinstance(a, (list, tuple)):
            return type(a)(copy(e) for e in a)
        return a

    with pyopt.use_backend("reference"):
        return fn(*copy(args), **{k: copy(v) for k, v in kwargs.items()})


def run_isa(isa: str, fn, *args, **kwargs):
    with pyopt.use_isa(isa):
        return fn(*args, **kwargs)


def bits(t: torch.Tensor, signed_zeros: bool = True) -> torch.Tensor:
    """A float tensor's bit patterns (NaNs canonicalised: payloads are not part of any op's contract; -0.0 as
    +0.0 unless signed_zeros)."""
    t = t.contiguous()
    if not t.is_floating_point():
        return t
    if not signed_zeros:
        t = t + 0.0  # -0.0 + 0.0 = +0.0
    t = torch.where(torch.isnan(t), torch.full_like(t, math.nan), t)
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_exact(got, want, what: str = "", signed_zeros: bool = True) -> None:
    """Bit-exact equality (signed zeros included, any NaN equals any NaN), with dtype, shape; also tuples."""
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_exact(a, b, f"{what}[{i}]", signed_zeros)
        return
    assert got.dtype == want.dtype and got.shape == want.shape, (
        what,
        got.dtype,
        want.dtype,
        got.shape,
        want.shape,
    )
    a, b = bits(got, signed_zeros), bits(want, signed_zeros)
    bad = (a != b).nonzero()
    if bad.numel():
        i = tuple(bad[0].tolist())
        raise AssertionError(
            f"{what}: {bad.shape[0]} of {a.numel()} values differ, first at {list(i)}: got {got[i].item()!r}, "
            f"want {want[i].item()!r}"
        )


def assert_close_scaled(got, want, scale, dtype, what: str = "", rtol_mult: float = 1.0) -> None:
    """|got - want| <= rtol * scale + atol elementwise, where `scale` is the magnitude the op's rounding errors
    grow with (e.g. sum_k |x_k w_k| for a dot product; the result itself may cancel to ~0), rtol/atol from
    tests/tolerances.py for the output dtype. Non-finite values must agree exactly (same inf sign, NaN where
    NaN); finite ones that the reference rounds to +-inf (dtype overflow) may be inf or the dtype's max."""
    from tolerances import TOL

    assert got.dtype == want.dtype and got.shape == want.shape, (
        what,
        got.dtype,
        want.dtype,
        got.shape,
        want.shape,
    )
    rtol, atol = TOL[dtype]
    g, w = got.double(), want.double()
    s = torch.as_tensor(scale, dtype=torch.float64).expand_as(w)
    nan_g, nan_w = torch.isnan(g), torch.isnan(w)
    # an exact result beyond the dtype's range is inf in one rounding order and finite in another only when it
    # sits at the edge; everything else non-finite must match
    edge = torch.isinf(w) | torch.isinf(g)
    edge &= torch.isfinite(s) & (s >= torch.finfo(got.dtype).max * 0.5)
    if not torch.equal(nan_g & ~edge, nan_w & ~edge):
        i = (nan_g != nan_w).nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: NaN mismatch at {i}: got {g[tuple(i)].item()}, want {w[tuple(i)].item()}"
        )
    inf_g = torch.isinf(g) & ~edge
    inf_w = torch.isinf(w) & ~edge
    if not (torch.equal(inf_g, inf_w) and torch.equal(g[inf_g], w[inf_w])):
        i = ((inf_g != inf_w) | (inf_g & (g != w))).nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: inf mismatch at {i}: got {g[tuple(i)].item()}, want {w[tuple(i)].item()}"
        )
    fin = torch.isfinite(g) & torch.isfinite(w)
    bound = rtol * rtol_mult * torch.where(torch.isfinite(s), s, 0) + atol
    err = (g - w).abs()
    bad = fin & ~(err <= bound)
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"{what}: {int(bad.sum())} values beyond tolerance, first at {list(i)}: got {g[i].item()!r}, "
            f"want {w[i].item()!r}, bound {bound[i].item():.3g}"
        )


# ----------------------------------------------------------------------------------------------------------
# bad inputs: every backend the same exception type, naming the argument
# ----------------------------------------------------------------------------------------------------------
def cpu_backends(op: str) -> list[str]:
    """The backends of `op` that run on CPU tensors here (reference, the C++ kernel, Triton's interpreter)."""
    return [p.values[1] for p in backend_params(op, ["cpu"]) if not p.marks]


def assert_all_raise(op: str, call, exc: type[Exception], name: str) -> None:
    """call() raises `exc` with `name` in its message on every backend of `op` (and every ISA for the C++ one),
    never anything else, and never returns."""
    for backend in cpu_backends(op):
        for isa in ISAS if backend == "cpu" else ISAS[:1]:
            with pyopt.use_backend(backend), pyopt.use_isa(isa):
                with pytest.raises(Exception) as info:  # noqa: PT011 - the type is checked below
                    call()
            e = info.value
            assert type(e) is exc, (
                f"{op} on {backend}/{isa}: expected {exc.__name__} naming {name!r}, got {type(e).__name__}: {e}"
            )
            assert name in str(e), f"{op} on {backend}/{isa}: message does not name {name!r}: {e}"


def has_native(op: str) -> bool:
    return "cpu" in backends.implementations(op)
