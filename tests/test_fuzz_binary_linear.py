"""Fuzz target of binary_linear (1-bit weights, optionally binary activations): the C++ kernel on every ISA tier
against the reference backend, within the tolerance table scaled by sum |x| * alpha (float sums of K terms);
random padding bits in the last byte of each packed row must be ignored. Bad arguments refused alike by every
backend. Settings and helpers: tests/fuzz_strategies.py."""

import math

import torch
from fuzz_strategies import (
    ISAS,
    assert_all_raise,
    assert_close_scaled,
    dims,
    features,
    float_tensors,
    fuzz,
    given,
    layouts,
    relayout,
    run_isa,
    run_ref,
    st,
)

from pyopt._rules import FLOAT_DTYPES

OP = torch.ops.pyopt.binary_linear


@st.composite
def binary_calls(draw):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    k = draw(st.one_of(st.just(0), features()))
    nd = draw(st.integers(1, 3))
    lead = [draw(dims(40 if nd == 1 else 6)) for _ in range(nd - 1)]
    while math.prod(lead) * max(k, 1) > 200_000:
        lead[lead.index(max(lead))] //= 2
    n = draw(dims(70))
    x = relayout(draw(float_tensors([*lead, k], dtype)), draw(layouts()))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    packed = torch.randint(
        0, 256, (n, (k + 7) // 8), generator=g, dtype=torch.uint8
    )  # padding bits random too
    packed = relayout(packed, draw(layouts(allow_expanded=False)))
    alpha = (torch.rand(n, generator=g) + 0.01) * draw(st.sampled_from([1.0, 1e-30, 1e30, 0.0]))
    bias = torch.randn(n, generator=g) if draw(st.booleans()) else None
    return x, packed, alpha, bias, k, draw(st.booleans())


@fuzz(300)
@given(args=binary_calls())
def test_fuzz_binary_linear(args):
    x, packed, alpha, bias, k, binact = args
    want = run_ref(OP, *args)
    scale = x.double().abs().sum(-1, keepdim=True) * alpha.double().abs()
    if bias is not None:
        scale = scale + bias.double().abs()
    for isa in ISAS:
        got = run_isa(isa, OP, *args)
        # (binary activations: the dot of the signs is exact; beta = mean |x| is a float sum of K terms)
        assert_close_scaled(got, want, scale, x.dtype, f"{isa} binact={binact}")


@st.composite
def bad_binary_calls(draw):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 20)), draw(st.integers(1, 5))
    x, packed = torch.randn(m, k), torch.randint(0, 256, (n, (k + 7) // 8), dtype=torch.uint8)
    alpha, bias, kk = torch.ones(n), None, k
    what = draw(
        st.sampled_from(
            ["x_int", "x_k", "k_neg", "p_dtype", "p_shape", "p_1d", "a_dtype", "a_shape", "b_shape", "b_f16"]
        )
    )
    if what == "x_int":
        x, exc, name = x.to(draw(st.sampled_from([torch.int32, torch.float64]))), TypeError, "x"
    elif what == "x_k":
        x, exc, name = torch.randn(m, k + 1), ValueError, "x"
    elif what == "k_neg":
        kk, exc, name = -1, ValueError, "in_features"
    elif what == "p_dtype":
        packed, exc, name = (
            packed.to(draw(st.sampled_from([torch.int8, torch.int32]))),
            TypeError,
            "packed_weight",
        )
    elif what == "p_shape":
        packed, exc, name = torch.zeros(n, (k + 7) // 8 + 1, dtype=torch.uint8), ValueError, "packed_weight"
    elif what == "p_1d":
        packed, exc, name = packed.reshape(-1), ValueError, "packed_weight"
    elif what == "a_dtype":
        alpha, exc, name = alpha.double(), ValueError, "alpha"
    elif what == "a_shape":
        alpha, exc, name = torch.ones(n + 1), ValueError, "alpha"
    elif what == "b_shape":
        bias, exc, name = torch.zeros(n + 2), ValueError, "bias"
    else:
        bias, exc, name = torch.zeros(n, dtype=torch.float16), ValueError, "bias"
    binact = draw(st.booleans())
    return "binary_linear", lambda: OP(x, packed, alpha, bias, kk, binact), exc, name


@fuzz(100)
@given(bad=bad_binary_calls())
def test_fuzz_binary_linear_bad_inputs_raise_alike(bad):
    assert_all_raise(*bad)
