"""Fuzz targets of the quant family: every quantize / dequantize op (and .out overload) on the C++ kernel, every
ISA tier here, bit-exact against the reference backend; bad arguments refused alike by every backend.
Settings and helpers: tests/fuzz_strategies.py."""

import math

import pytest
import torch
from fuzz_strategies import (
    ISAS,
    assert_all_raise,
    assert_exact,
    dims,
    float_tensors,
    fuzz,
    given,
    layouts,
    relayout,
    run_isa,
    run_ref,
    st,
)

import pyopt
from pyopt._rules import FLOAT_DTYPES, QRANGE, QUANT_DTYPES

OPS = torch.ops.pyopt
FLOATS = st.sampled_from(FLOAT_DTYPES)
QDTYPES = st.sampled_from(QUANT_DTYPES)
# scales: float32 edge cases (1e-45 is the smallest subnormal: 1/scale = inf; 3e38 near the largest float) and
# ordinary values; float64-only values are in the bad inputs
SCALES = st.one_of(
    st.sampled_from([1.0, 0.1, 1 / 3, 2.0**-10, 1e-3, 1e3, 3e38, 1.2e-38, 1e-45, 1e-40, 0.0371]),
    st.floats(1e-6, 1e6),
)
ZP_DTYPES = st.sampled_from([torch.int64, torch.int32, torch.int16, torch.uint8])


@st.composite
def shapes(draw, min_dims=0, max_dims=4, max_numel=20_000):
    nd = draw(st.integers(min_dims, max_dims))
    shape = [draw(dims(9 if nd > 2 else 40)) for _ in range(nd)]
    if nd and draw(st.booleans()):  # a long last dim (vector bodies + tails), the rest small
        shape[-1] = draw(st.integers(0, 3000))
    while math.prod(shape) > max_numel:
        shape[shape.index(max(shape))] //= 2
    return shape


@st.composite
def zero_points(draw, n, qdtype):
    lo, hi = QRANGE[qdtype]
    zdt = draw(ZP_DTYPES)
    if zdt == torch.uint8 and lo < 0:
        zdt = torch.int16
    kind = draw(st.sampled_from(["random", "lo", "hi", "mid"]))
    val = {"lo": lo, "hi": hi, "mid": (lo + hi + 1) // 2}.get(kind)
    if val is not None:
        return torch.full((n,), val, dtype=zdt)
    return torch.randint(
        lo, hi + 1, (n,), generator=torch.Generator().manual_seed(draw(st.integers(0, 99))), dtype=zdt
    )


@st.composite
def channel_scales(draw, n):
    dt = draw(st.sampled_from([torch.float32, torch.float64]))
    return (
        torch.tensor(draw(st.lists(SCALES, min_size=n, max_size=n)), dtype=dt)
        if n <= 64
        else (
            torch.rand(n, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))), dtype=dt)
            * draw(SCALES)
            + torch.finfo(torch.float32).tiny
        )
    )


def q_tensor(shape, qdtype, s):
    lo, hi = QRANGE[qdtype]
    return torch.randint(lo, hi + 1, shape, generator=torch.Generator().manual_seed(s), dtype=qdtype)


def check_all_isas(fn, args, ref_args=None):
    want = run_ref(fn, *(ref_args or args))
    for isa in ISAS:
        assert_exact(run_isa(isa, fn, *args), want, isa)


@st.composite
def quantize_calls(draw, op):
    """(fn, args) of a valid call of `op`, x in a drawn layout."""
    dtype = draw(FLOATS)
    if op == "quantize_per_group":
        shape = draw(shapes(min_dims=1, max_numel=12_000))
        group = draw(st.sampled_from([1, 2, 3, 7, 8, 16, 32, 33, 64, 128]))
        shape[-1] = group * draw(st.integers(0, 40))
        x = relayout(draw(float_tensors(shape, dtype)), draw(layouts()))
        return OPS.quantize_per_group, (x, group, draw(QDTYPES), draw(st.booleans()))
    shape = draw(shapes(min_dims=1 if op != "quantize_per_tensor" else 0))
    x = relayout(draw(float_tensors(shape, dtype)), draw(layouts()))
    if op == "quantize_per_tensor":
        qd = draw(QDTYPES)
        return OPS.quantize_per_tensor, (x, draw(SCALES), draw(st.integers(*QRANGE[qd])), qd)
    if op == "quantize_per_token":
        return OPS.quantize_per_token, (x, torch.int8)
    qd = draw(QDTYPES)
    axis = draw(st.integers(-x.dim(), x.dim() - 1))
    n = x.shape[axis]
    return OPS.quantize_per_channel, (x, draw(channel_scales(n)), draw(zero_points(n, qd)), axis, qd)


@st.composite
def dequantize_calls(draw, op):
    """(fn, args, kwargs) of a valid call of `op` (a dequantize op, or its .out overload)."""
    base, _, overload = op.partition(".")
    qd = draw(QDTYPES)
    out_dtype = draw(FLOATS)
    s = draw(st.integers(0, 2**31 - 1))
    if base == "dequantize_per_group":
        shape = draw(shapes(min_dims=1, max_numel=12_000))
        group = draw(st.sampled_from([1, 2, 3, 8, 16, 32, 64, 128]))
        shape[-1] = group * draw(st.integers(0, 40))
        q = relayout(q_tensor(shape, qd, s), draw(layouts()))
        groups = shape[:-1] + [shape[-1] // group]
        n = math.prod(groups)
        params = (draw(channel_scales(n)).reshape(groups), draw(zero_points(n, qd)).reshape(groups), group)
    else:
        shape = draw(shapes(min_dims=0 if base == "dequantize_per_tensor" else 1))
        q = relayout(q_tensor(shape, qd, s), draw(layouts()))
        if base == "dequantize_per_tensor":
            params = (draw(SCALES), draw(st.integers(*QRANGE[qd])))
        else:
            axis = draw(st.integers(-q.dim(), q.dim() - 1))
            n = q.shape[axis]
            params = (draw(channel_scales(n)), draw(zero_points(n, qd)), axis)
    fn = getattr(OPS, base)
    if overload:
        out = relayout(torch.full(q.shape, 7.0, dtype=out_dtype), draw(layouts(allow_expanded=False)))
        return fn.out, (q, *params), {"out": out}
    return fn, (q, *params, out_dtype), {}


QUANTIZE_OPS = ["quantize_per_tensor", "quantize_per_channel", "quantize_per_token", "quantize_per_group"]
DEQUANTIZE_OPS = [f"dequantize_per_{k}{o}" for k in ("tensor", "channel", "group") for o in ("", ".out")]


@pytest.mark.parametrize("op", QUANTIZE_OPS)
@fuzz(150)
@given(data=st.data())
def test_fuzz_quantize_bit_exact(op, data):
    fn, args = data.draw(quantize_calls(op))
    check_all_isas(fn, args)


@pytest.mark.parametrize("op", DEQUANTIZE_OPS)
@fuzz(100)
@given(data=st.data())
def test_fuzz_dequantize_bit_exact(op, data):
    fn, args, kwargs = data.draw(dequantize_calls(op))
    if "out" not in kwargs:
        check_all_isas(fn, args)
        return
    ref_out = kwargs["out"].contiguous().clone()
    with pyopt.use_backend("reference"):
        fn(*args, out=ref_out)  # (not run_ref: it would write into a copy of out)
    for isa in ISAS:
        out = kwargs["out"].clone() if kwargs["out"].is_contiguous() else relayout(kwargs["out"], "strided")
        out.fill_(7.0)
        run_isa(isa, fn, *args, out=out)
        assert_exact(out, ref_out, isa)


# ----------------------------------------------------------------------------------------------------------
# bad arguments: (mutation name, exception, the argument the message must name)
# ----------------------------------------------------------------------------------------------------------
BAD_SCALES = [0.0, -1.0, math.nan, math.inf, -math.inf, 1e-50, 1e39]


@st.composite
def bad_quant_calls(draw):
    """(op name, call, exception, argument name): one valid call with one argument broken."""
    x = torch.randn(draw(st.integers(1, 5)), draw(st.sampled_from([1, 4, 6])))
    q = torch.randint(-128, 128, x.shape, dtype=torch.int8)
    n = x.shape[0]
    s, z = torch.ones(n), torch.zeros(n, dtype=torch.int64)
    what = draw(
        st.sampled_from(
            [
                "x_int", "x_f64", "x_bool", "scale", "zp", "dtype", "axis", "scales_shape", "scales_int", "zps_float",
                "scales_value", "zps_value", "token_dtype", "token_0d", "group_size", "group_zero", "q_float",
                "out_dtype", "out_shape", "out_overlap", "out_int", "group_scales_shape",
            ]
        )
    )  # fmt: skip
    bad_x = {"x_int": x.int(), "x_f64": x.double(), "x_bool": x > 0}.get(what)
    if bad_x is not None:
        op = draw(st.sampled_from(QUANTIZE_OPS))
        args = {
            "quantize_per_tensor": (bad_x, 0.1, 0, torch.int8),
            "quantize_per_channel": (bad_x, s, z, 0, torch.int8),
            "quantize_per_token": (bad_x, torch.int8),
            "quantize_per_group": (bad_x, 1, torch.int8, True),
        }[op]
        return op, lambda: getattr(OPS, op)(*args), TypeError, "x"
    if what == "scale":
        bad, op = draw(st.sampled_from(BAD_SCALES)), draw(st.sampled_from(["quantize", "dequantize"]))
        if op == "quantize":
            return (
                "quantize_per_tensor",
                lambda: OPS.quantize_per_tensor(x, bad, 0, torch.int8),
                ValueError,
                "scale",
            )
        return (
            "dequantize_per_tensor",
            lambda: OPS.dequantize_per_tensor(q, bad, 0, torch.float32),
            ValueError,
            "scale",
        )
    if what == "zp":
        qd = draw(QDTYPES)
        bad = draw(st.sampled_from([QRANGE[qd][0] - 1, QRANGE[qd][1] + 1, -(2**40)]))
        if draw(st.booleans()):
            return (
                "quantize_per_tensor",
                lambda: OPS.quantize_per_tensor(x, 0.1, bad, qd),
                ValueError,
                "zero_point",
            )
        qq = q.to(qd)
        return (
            "dequantize_per_tensor",
            lambda: OPS.dequantize_per_tensor(qq, 0.1, bad, torch.float32),
            ValueError,
            ("zero_point"),
        )
    if what == "dtype":
        bad = draw(st.sampled_from([torch.int32, torch.float32, torch.qint8, torch.int16]))
        op = draw(st.sampled_from(["quantize_per_tensor", "quantize_per_channel", "quantize_per_group"]))
        args = {
            "quantize_per_tensor": (x, 0.1, 0, bad),
            "quantize_per_channel": (x, s, z, 0, bad),
            "quantize_per_group": (x, 1, bad, True),
        }[op]
        return op, lambda: getattr(OPS, op)(*args), TypeError, "dtype"
    channel_op = draw(st.sampled_from(["quantize_per_channel", "dequantize_per_channel"]))
    first = x if channel_op.startswith("q") else q
    last = torch.int8 if channel_op.startswith("q") else torch.float32

    def channel(sc, zp, axis=0):
        return lambda: getattr(OPS, channel_op)(first, sc, zp, axis, last)

    if what == "axis":
        return channel_op, channel(s, z, draw(st.sampled_from([2, 3, -3, 100]))), ValueError, "axis"
    if what == "scales_shape":
        return channel_op, channel(torch.ones(n + 1), z), ValueError, "scales"
    if what == "scales_int":
        return channel_op, channel(torch.ones(n, dtype=torch.int32), z), TypeError, "scales"
    if what == "zps_float":
        return channel_op, channel(s, torch.zeros(n)), TypeError, "zero_points"
    if what == "scales_value":
        bad = s.clone().double()
        bad[draw(st.integers(0, n - 1))] = draw(st.sampled_from(BAD_SCALES))
        return channel_op, channel(bad, z), ValueError, "scales"
    if what == "zps_value":
        bad = z.clone()
        bad[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-129, 128, 2**40]))
        return channel_op, channel(s, bad), ValueError, "zero_points"
    if what == "token_dtype":
        return "quantize_per_token", lambda: OPS.quantize_per_token(x, torch.uint8), TypeError, "dtype"
    if what == "token_0d":
        return (
            "quantize_per_token",
            lambda: OPS.quantize_per_token(torch.tensor(1.0), torch.int8),
            ValueError,
            "x",
        )
    if what in ("group_size", "group_zero"):
        g = x.shape[1] + 1 if what == "group_size" else draw(st.sampled_from([0, -2]))
        if draw(st.booleans()):
            return (
                "quantize_per_group",
                lambda: OPS.quantize_per_group(x, g, torch.int8, False),
                ValueError,
                ("group_size"),
            )
        gs = torch.ones(n, 1)
        return (
            "dequantize_per_group",
            lambda: OPS.dequantize_per_group(q, gs, gs.long(), g, torch.float32),
            ValueError,
            "group_size",
        )
    if what == "group_scales_shape":
        return (
            "dequantize_per_group",
            lambda: OPS.dequantize_per_group(
                q, torch.ones(n + 1, 1), torch.zeros(n + 1, 1, dtype=torch.int64), x.shape[1], torch.float32
            ),
            ValueError,
            "scales",
        )
    if what == "q_float":
        return (
            "dequantize_per_tensor",
            lambda: OPS.dequantize_per_tensor(x, 0.1, 0, torch.float32),
            TypeError,
            "q",
        )
    if what == "out_dtype":
        bad = draw(st.sampled_from([torch.int32, torch.int8, torch.float64]))
        return (
            "dequantize_per_tensor",
            lambda: OPS.dequantize_per_tensor(q, 0.1, 0, bad),
            TypeError,
            "out_dtype",
        )
    # the .out overloads
    if what == "out_shape":
        out = torch.empty(x.shape[0], x.shape[1] + 1)
        return (
            "dequantize_per_tensor.out",
            lambda: OPS.dequantize_per_tensor.out(q, 0.1, 0, out=out),
            ValueError,
            ("out"),
        )
    if what == "out_int":
        out = torch.empty(x.shape, dtype=torch.int32)
        return (
            "dequantize_per_tensor.out",
            lambda: OPS.dequantize_per_tensor.out(q, 0.1, 0, out=out),
            TypeError,
            ("out"),
        )
    # out sharing q's bytes: q is the first bytes of out's storage
    raw = torch.zeros(x.numel() * 4, dtype=torch.uint8)
    out = raw.view(torch.float32).view(x.shape)
    qq = raw[: x.numel()].view(torch.int8).view(x.shape)
    return (
        "dequantize_per_tensor.out",
        lambda: OPS.dequantize_per_tensor.out(qq, 0.1, 0, out=out),
        ValueError,
        "out",
    )


@fuzz(150)
@given(bad=bad_quant_calls())
def test_fuzz_quant_bad_inputs_raise_alike(bad):
    op, call, exc, name = bad
    assert_all_raise(op, call, exc, name)
