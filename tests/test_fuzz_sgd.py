"""Fuzz target of fused_sgd_: one step over a drawn list of tensors (dtypes, masks, master weights, momentum /
Nesterov / dampening / weight decay / maximize, tensor lr, GradScaler's scale and found_inf, non-contiguous
params) on the C++ kernel, every ISA tier, bit-exact with the reference backend (both follow torch's for-loop
SGD operation by operation); bad arguments refused alike by every backend. Helpers: tests/fuzz_strategies.py."""

import math

import torch
from fuzz_strategies import (
    ISAS,
    assert_all_raise,
    assert_exact,
    dims,
    float_tensors,
    fuzz,
    given,
    relayout,
    run_isa,
    st,
)

import pyopt
from pyopt._rules import LOW_PRECISION, SGD_DTYPES

OP = torch.ops.pyopt.fused_sgd_
F32_DTYPES = st.sampled_from(SGD_DTYPES)


@st.composite
def sgd_steps(draw):
    n = draw(st.integers(0, 4))
    master = n > 0 and draw(st.integers(0, 3)) == 0
    momentum = draw(st.sampled_from([0.0, 0.9, 0.5, 1.0]))
    with_bufs = momentum != 0 and draw(st.booleans())
    params, grads, bufs, masters, masks, first = [], [], [], [], [], []
    with_masks = draw(st.booleans())
    for _ in range(n):
        dtype = draw(st.sampled_from(LOW_PRECISION)) if master else draw(F32_DTYPES)
        shape = [draw(dims(70)) for _ in range(draw(st.integers(0, 3)))]
        if draw(st.integers(0, 6)) == 0:
            shape = [draw(st.integers(30_000, 70_000))]  # more than one chunk of the launcher
        while math.prod(shape) > 80_000:
            shape[shape.index(max(shape))] //= 2
        p = draw(float_tensors(shape, torch.float32 if master else dtype))
        params.append(
            relayout(p.to(dtype), draw(st.sampled_from(["contiguous", "transposed", "strided", "offset"])))
        )
        if master:
            masters.append(p.clone())
        grads.append(
            relayout(
                draw(float_tensors(shape, dtype)),
                draw(st.sampled_from(["contiguous", "strided", "expanded"])),
            )
        )
        if with_bufs:
            bufs.append(draw(float_tensors(shape, torch.float32 if master else dtype, specials=False)))
            first.append(draw(st.booleans()))
        if with_masks:
            m = None
            if draw(st.booleans()):
                g = torch.Generator().manual_seed(draw(st.integers(0, 999)))
                m = torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0]))
            masks.append(m)
    lr = draw(st.sampled_from([0.1, 1e-3, 0.0, 1.0, 3e-7, 10.0]))
    lr_tensor = None
    if draw(st.integers(0, 3)) == 0:
        lr_tensor = torch.tensor(
            [draw(st.sampled_from([0.05, 1e-4, 2.0]))],
            dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        )
    grad_scale = torch.tensor(draw(st.sampled_from([65536.0, 3.0, 0.5]))) if draw(st.booleans()) else None
    found_inf = torch.tensor(draw(st.sampled_from([0.0, 1.0]))) if draw(st.integers(0, 3)) == 0 else None
    dampening = draw(st.sampled_from([0.0, 0.0, 0.1]))
    nesterov = momentum != 0 and dampening == 0 and draw(st.booleans())
    return (
        params, grads, bufs, masters, masks, first, lr, draw(st.sampled_from([0.0, 1e-4, 0.1])), momentum,
        dampening, nesterov, draw(st.booleans()), lr_tensor, grad_scale, found_inf,
    )  # fmt: skip


def clone_step(args):
    """A copy of what the step writes (params, momentum buffers, master params), params keeping their strides;
    the read-only arguments (grads: possibly expanded) are shared."""

    def copy(t):
        out = torch.empty_like(t)  # (keeps the strides of a dense permuted tensor)
        return out.copy_(t) if out.stride() == t.stride() else relayout(t, "strided")

    return tuple([copy(t) for t in a] if k in (0, 2, 3) else a for k, a in enumerate(args))


@fuzz(250)
@given(args=sgd_steps())
def test_fuzz_fused_sgd_bit_exact(args):
    ref = clone_step(args)
    with pyopt.use_backend("reference"):
        OP(*ref)
    for isa in ISAS:
        mine = clone_step(args)
        run_isa(isa, OP, *mine)
        for k, what in ((0, "params"), (2, "momentum_buffers"), (3, "master_params")):
            for i, (a, b) in enumerate(zip(mine[k], ref[k], strict=True)):
                assert_exact(a, b, f"{isa} {what}[{i}]")


@st.composite
def bad_sgd_calls(draw):
    n = draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 5)), 3)
    ps = [torch.randn(shape) for _ in range(n)]
    gs = [torch.randn(shape) for _ in range(n)]
    bufs, masters, masks, first = [], [], [], []
    lr, lr_t = 0.1, None
    what = draw(
        st.sampled_from(["grads_len", "grad_shape", "grad_dtype", "buf_len", "buf_shape", "first_len", "lr",
                         "lr_tensor", "mask_dtype", "mask_shape", "masks_len", "master_dtype", "param_dtype"])
    )  # fmt: skip
    i = draw(st.integers(0, n - 1))
    if what == "grads_len":
        gs, exc, name = gs[:-1], ValueError, "grads"
    elif what == "grad_shape":
        gs[i], exc, name = torch.randn(shape[0] + 1, 3), ValueError, f"grads[{i}]"
    elif what == "grad_dtype":
        gs[i], exc, name = gs[i].double(), ValueError, f"grads[{i}]"
    elif what == "buf_len":
        bufs, first, exc, name = (
            [torch.zeros(shape)] * (n + 1),
            [True] * (n + 1),
            ValueError,
            "momentum_buffers",
        )
    elif what == "buf_shape":
        bufs, first = [torch.zeros(shape) for _ in range(n)], [False] * n
        bufs[i], exc, name = torch.zeros(shape[0], 4), ValueError, f"momentum_buffers[{i}]"
    elif what == "first_len":
        bufs, first, exc, name = (
            [torch.zeros(shape) for _ in range(n)],
            [True] * (n + 1),
            ValueError,
            "first_step",
        )
    elif what == "lr":
        lr, exc, name = draw(st.sampled_from([-0.1, math.nan, math.inf])), ValueError, "learning rate"
    elif what == "lr_tensor":
        lr_t, exc, name = torch.tensor([0.1, 0.2]), ValueError, "lr_tensor"
    elif what in ("mask_dtype", "mask_shape"):
        masks = [None] * n
        masks[i] = (
            torch.ones(shape) if what == "mask_dtype" else torch.ones(shape[0] + 1, 3, dtype=torch.bool)
        )
        exc, name = ValueError, f"masks[{i}]"
    elif what == "masks_len":
        masks, exc, name = [None] * (n + 1), ValueError, "masks"
    elif what == "master_dtype":
        ps = [p.bfloat16() for p in ps]
        gs = [g.bfloat16() for g in gs]
        masters = [p.float() for p in ps]
        masters[i], exc, name = masters[i].double(), ValueError, f"master_params[{i}]"
    else:
        ps[i], gs[i], exc, name = ps[i].to(torch.int32), gs[i].to(torch.int32), TypeError, "params"
    args = (ps, gs, bufs, masters, masks, first, lr, 0.0, 0.9, 0.0, False, False, lr_t, None, None)
    return "fused_sgd_", lambda: OP(*args), exc, name


@fuzz(100)
@given(bad=bad_sgd_calls())
def test_fuzz_fused_sgd_bad_inputs_raise_alike(bad):
    assert_all_raise(*bad)
