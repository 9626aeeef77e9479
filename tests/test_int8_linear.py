"""Int8Linear / Int8Conv2d and their ops: every backend and ISA vs the reference, accuracy vs float, module
protocol (state_dict, deepcopy, torch.save/load weights_only, torch.compile), bad inputs."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params, isa_params
from tolerances import tol
from torch import nn

import pyopt
from pyopt._rules import quantize_rows_symmetric
from pyopt.nn import Int8Conv2d, Int8Linear
from pyopt.nn.registry import MODULES

LINEAR_OPS = ("int8_linear_dynamic", "int8_linear_weight_only")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _weights(n, k, bias=True, device="cpu"):
    q, s = quantize_rows_symmetric(torch.randn(n, k))
    b = torch.randn(n) if bias else None
    return q.to(device), s.to(device), None if b is None else b.to(device)


def _run(op, backend, *args):
    with pyopt.use_backend(backend):
        return getattr(torch.ops.pyopt, op)(*args)


def quantize_rows_cpu(x2d):
    """The C++ per-token row quantiser the int8 layers use (the quant family's op runs the same function)."""
    with pyopt.use_backend("cpu"):
        q, s = torch.ops.pyopt.quantize_per_token(x2d, torch.int8)
    return q, s.reshape(x2d.shape[0])


def _skip_interp_bf16(device, backend, dtype):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 dots wrongly (loads bf16, computes fp32)")


def _sqnr_db(ref, out):
    return 10 * math.log10(ref.pow(2).sum().item() / (ref - out).pow(2).sum().item())


# ----------------------------------------------------------------------------------------------------------
# per-token quantisation (the integer part): exact
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 33), (2, 1003)])
def test_quantize_rows_cpu_exact(isa, dtype, shape):
    x = torch.randn(shape).to(dtype) * 3
    x[0, 0] = 0.5 * 3  # ties appear after scaling too; plus a zero row below
    if shape[0] > 1:
        x[1] = 0
    with pyopt.use_isa(isa):
        q, s = quantize_rows_cpu(x)
    q_ref, s_ref = quantize_rows_symmetric(x)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    assert q.abs().max() <= 127 and s[1 if shape[0] > 1 else 0] > 0


def test_quantize_rows_rule():
    # amax 127 -> scale 1: q = rint_half_even(x); 2.5 -> 2, 3.5 -> 4, -0.5 -> 0
    x = torch.tensor([[127.0, 2.5, 3.5, -0.5, -127.0]])
    q, s = quantize_rows_symmetric(x)
    assert s.tolist() == [1.0] and q.tolist() == [[127, 2, 4, 0, -127]]


# ----------------------------------------------------------------------------------------------------------
# linear ops vs reference
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", LINEAR_OPS)
@pytest.mark.parametrize(("device", "backend"), backend_params("int8_linear_dynamic"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "n", "bias"), [((1, 7), 3, True), ((5, 33), 17, False), ((2, 3, 40), 65, True)]
)
def test_linear_backends_vs_reference(op, device, backend, dtype, shape, n, bias):
    _skip_interp_bf16(device, backend, dtype)
    x = torch.randn(shape, device=device).to(dtype)
    w, s, b = _weights(n, shape[-1], bias, device)
    out = _run(op, backend, x, w, s, b)
    ref = _run(op, "reference", x, w, s, b)
    assert out.shape == (*shape[:-1], n) and out.dtype == dtype
    torch.testing.assert_close(out, ref, **tol(dtype))


@pytest.mark.parametrize(("device", "backend"), backend_params("int8_linear_dynamic"))
@pytest.mark.parametrize(
    "config",
    [  # GPU-style launches: grouped program order with a partial last group, the small-M narrow tiles
        dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, GROUP_M=3, num_warps=4, num_stages=1),
        dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=1),
    ],
)
def test_triton_gemm_configs(device, backend, config):
    """Any tile / group configuration (bench/tune_int8_gpu.py sweeps them on a GPU) gives the same result."""
    if backend != "triton":
        pytest.skip("Triton kernel configurations")
    from pyopt.kernels import int8_linear as kern

    x = torch.randn(50, 70, device=device)  # 4 row blocks x 5 column blocks at 16 x 16: a partial group
    w, s, b = _weights(75, 70, True, device)
    for name, fn in (
        ("int8_linear_dynamic", kern.int8_linear_dynamic),
        ("int8_linear_weight_only", kern.int8_linear_weight_only),
    ):
        ref = _run(name, "reference", x, w, s, b)
        torch.testing.assert_close(fn(x, w, s, b, config=config), ref, **tol(torch.float32))


@pytest.mark.parametrize("op", LINEAR_OPS)
@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("m", "k", "n"), [(1, 1, 5), (1, 1003, 9), (4, 17, 7), (17, 100, 13), (70, 33, 6), (1003, 48, 21)]
)
def test_linear_cpu_isas(op, isa, dtype, m, k, n):
    x = torch.randn(m, k).to(dtype)
    w, s, b = _weights(n, k)
    with pyopt.use_isa(isa):
        out = _run(op, "cpu", x, w, s, b)
    torch.testing.assert_close(out, _run(op, "reference", x, w, s, b), **tol(dtype))


# The native AVX512-VNNI GEMM (csrc/cpu/int8_gemm.cpp): the activations enter vpdpbusd shifted to u8 and
# each column is corrected by 128 * sum_k w, all in wrapping int32, so the accumulators are exact, and the
# epilogue runs the reference's float32 operations in the reference's order (no fma). So the output must equal
# the reference bit for bit. Shapes: M tails of its 32/16-row tiles (2, 7, 17, 33, 1003), K not a multiple of
# 4 (1, 3, 4099) or of its 64-byte packing (100), N tails of its 8-column tiles and 16-column pairs (N = 48:
# whole aligned rows, streamed for float32); both work splits (per-item
# packing when there are >= 4 blocks of 128 rows per thread, M = 1003 and 1500 here; one shared packing
# otherwise), with 1, 2 and 3 threads (3 on this 2-core machine: threads stall, so the others claim the
# remaining 128-column chunks of their row blocks; N = 300: chunks with a tail, also with K % 4 != 0).
def _vnni_available():
    names = pyopt.ops.native.ISA_NAMES
    return names.index(pyopt.ops.native.detected_isa()) >= names.index("avx512_vnni")


@pytest.mark.skipif(not _vnni_available(), reason="needs a CPU with AVX512-VNNI")
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [
        (2, 1, 5),
        (7, 3, 9),
        (17, 100, 8),
        (33, 64, 23),
        (1003, 48, 21),
        (1500, 20, 300),
        (1500, 27, 300),
        (5, 4099, 17),
        (64, 256, 130),
        (40, 96, 48),
    ],
)
def test_linear_dynamic_vnni_bit_exact(threads, dtype, m, k, n):
    x = (torch.randn(m, k) * 3).to(dtype)
    w, s, b = _weights(n, k, bias=n % 2 == 1)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with pyopt.use_isa("avx512_vnni"):
            out = _run("int8_linear_dynamic", "cpu", x, w, s, b)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(out, _run("int8_linear_dynamic", "reference", x, w, s, b))


@pytest.mark.skipif(not _vnni_available(), reason="needs a CPU with AVX512-VNNI")
def test_linear_dynamic_vnni_extreme_sums():
    # |acc| up to 127 * 127 * K with every product the same sign, and q = -127 against w = 127: the u8 shift
    # and the per-column correction must cancel exactly for long same-sign sums (int32 wrap-around itself
    # needs K of ~66k for the shifted sums; this checks the correction's sign and magnitude handling).
    k, n = 4100, 19
    x = torch.ones(6, k)
    x[1] = -1.0
    x[2, ::2] = -1.0
    w = torch.full((n, k), 127, dtype=torch.int8)
    w[1::2] = -127
    w[3, 5] = 0
    s = torch.rand(n) + 0.5
    out = _run("int8_linear_dynamic", "cpu", x, w, s, None)
    ref = _run("int8_linear_dynamic", "reference", x, w, s, None)
    assert torch.equal(out, ref)
    torch.testing.assert_close(
        out[0, :2], torch.tensor([127.0 * k, -127.0 * k]) * s[:2], **tol(torch.float32)
    )


@pytest.mark.skipif(not _vnni_available(), reason="needs a CPU with AVX512-VNNI")
def test_linear_dynamic_vnni_strided_weight_and_input():
    # the Python layer makes both contiguous; a transposed input and a sliced weight go through the kernel
    x = torch.randn(300, 45)[:, 2:42].t()  # [40, 300], non-contiguous
    w_full, s, b = _weights(21, 600)
    w = w_full[:, ::2]  # [21, 300], non-contiguous
    assert torch.equal(
        _run("int8_linear_dynamic", "cpu", x, w, s, b), _run("int8_linear_dynamic", "reference", x, w, s, b)
    )


# Every tier of the dynamic path is exact: the native GEMMs (AVX2: int16 vpmaddwd on a per-call packed weight,
# and for M <= 32 with K >= 32 M vpmaddubsw dot products of |w| and sign(w) * q on the plain weight; VNNI above)
# sum in wrapping int32, which is exact for K <= 132104, and apply the reference's float32 epilogue in its order
# (no fma); the scalar tier sums with at::_int_mm. So every ISA must match the reference bit for bit. Shapes: M
# on both sides of the small-M kernels (M = 32 / 33, K against 32 M) and the 6-row tiles' tails, N tails of the
# 16-column panels and the 2-column dot tiles, K not a multiple of 2, 4, 16 or 32 and K < any tile (1, 3, 7);
# both work splits of the packed path (packed rows over 4 MiB: blocks of rows per thread, M = 1003 / 1100 with
# K = 4099 / 2900, the latter with 128-column chunks claimed across blocks and a tail; every row per item
# otherwise), 1, 2 and 3 threads (3 on 2 cores: stalled threads, work claimed by the others), weights holding
# -128 (no saturation in the int16 or u8 x s8 pair sums).
NATIVE_SHAPES = [
    (1, 1, 1),
    (1, 7, 3),
    (3, 17, 7),
    (7, 3, 17),
    (8, 100, 5),
    (8, 1003, 5),
    (9, 1, 3),
    (17, 7, 1003),
    (32, 1024, 9),
    (33, 1024, 9),
    (1003, 3, 17),
    (1003, 1003, 7),
    (40, 4099, 33),
    (1003, 4099, 17),
    (1100, 2900, 300),
    (2100, 20, 300),
]


def _with_threads(threads, fn):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(prev)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "k", "n"), NATIVE_SHAPES)
def test_linear_dynamic_bit_exact(isa, threads, dtype, m, k, n):
    x = (torch.randn(m, k) * 3).to(dtype)
    w, s, b = _weights(n, k, bias=(m + n) % 2 == 1)
    w[0, 0] = -128
    w[n // 2, k - 1] = -128
    with pyopt.use_isa(isa):
        out = _with_threads(threads, lambda: _run("int8_linear_dynamic", "cpu", x, w, s, b))
    assert torch.equal(out, _run("int8_linear_dynamic", "reference", x, w, s, b))


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("m", [2, 9])
@pytest.mark.parametrize("wval", [127, -128])
def test_linear_dynamic_int32_overflow_exact(isa, m, wval):
    # K = 140,000 with every q = 127 (x = +-1) and w = 127 or -128: |sum| = 127 * |w| * K > 2^31, so int32 sums
    # would wrap. The kernels split K into blocks of 2^17 whose int32 partial sums are exact and add them in
    # int64 (int8_gemm.cpp), so the result stays bit-identical to the float64 reference on every tier.
    k, n = 140_000, 3
    x = torch.ones(m, k)
    x[1] = -1.0
    x[0, ::7] = 0.5  # q = 64 there: sums that are not a multiple of 127
    w = torch.full((n, k), wval, dtype=torch.int8)
    w[1, ::3] = 5
    s = torch.rand(n) + 0.5
    b = torch.randn(n)
    with pyopt.use_isa(isa):
        out = _run("int8_linear_dynamic", "cpu", x, w, s, b)
    ref = _run("int8_linear_dynamic", "reference", x, w, s, b)
    assert torch.equal(out, ref)
    # row 1: q = -127 with scale 1/127, column 0: w = wval everywhere, so acc = -127 * wval * K, beyond int32
    assert abs(-127 * wval * k) > 2**31
    torch.testing.assert_close(out[1, 0], -wval * k * s[0] + b[0], rtol=1e-5, atol=0)


@pytest.mark.parametrize("isa", isa_params())
def test_conv_dynamic_int32_overflow_exact(isa):
    # in_channels * kh * kw = 14,700 * 9 = 132,300 > 132,104: the conv's GEMM takes the K-split path too
    c = 14_700
    x = torch.ones(2, c, 3, 3)
    x[1] = -1.0
    wq = torch.full((2, c, 3, 3), -128, dtype=torch.int8)
    wq[1] = 127
    ws, b = torch.rand(2) + 0.5, torch.randn(2)
    args = (x, wq, ws, b, [1, 1], [0, 0], [1, 1])
    with pyopt.use_isa(isa):
        out = _run("int8_conv2d_dynamic", "cpu", *args)
    assert torch.equal(out, _run("int8_conv2d_dynamic", "reference", *args))


_GUARD_SCRIPT = r"""
import ctypes, mmap, sys
import torch, pyopt
from pyopt._rules import quantize_rows_symmetric

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None)
keep = []


def guarded(t):
    # a copy of t whose last byte is the last byte before a PROT_NONE page: any read past it faults
    nbytes = t.numel() * t.element_size()
    pages = (nbytes + PAGE - 1) // PAGE + 1
    buf = mmap.mmap(-1, pages * PAGE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert libc.mprotect(ctypes.c_void_p(addr + (pages - 1) * PAGE), PAGE, 0) == 0
    keep.append(buf)
    raw = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=(pages - 1) * PAGE - nbytes)
    g = raw.view(t.dtype).view(t.shape)
    g.copy_(t)
    return g


torch.manual_seed(0)
for isa in sys.argv[1:]:
    for m, k, n in [(1, 1, 1), (2, 1, 3), (3, 33, 5), (8, 47, 2), (9, 1, 17), (13, 31, 19), (40, 100, 33),
                    (1003, 7, 21), (7, 4099, 3), (20, 4101, 40)]:
        x = torch.randn(m, k)
        w, s = quantize_rows_symmetric(torch.randn(n, k))
        b = torch.randn(n)
        with pyopt.use_backend("cpu"), pyopt.use_isa(isa):
            out = torch.ops.pyopt.int8_linear_dynamic(guarded(x), guarded(w), guarded(s), guarded(b))
        with pyopt.use_backend("reference"):
            ref = torch.ops.pyopt.int8_linear_dynamic(x, w, s, b)
        assert torch.equal(out, ref), (isa, m, k, n)
print("ok")
"""


def test_linear_dynamic_reads_nothing_past_its_inputs():
    # x, the weight, its scales and the bias each end right before an inaccessible page (a fault kills the
    # subprocess): K and N tails of every kernel, K == 1, the small-M and the packed paths, every ISA here.
    import subprocess
    import sys

    isas = [p.values[0] for p in isa_params()]
    res = subprocess.run(
        [sys.executable, "-c", _GUARD_SCRIPT, *isas], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout + res.stderr


@pytest.mark.parametrize("op", LINEAR_OPS)
def test_linear_noncontiguous_and_empty(op):
    x = torch.randn(40, 6)[:, 1:].t()  # [5, 40], non-contiguous
    w_full, s, b = _weights(9, 80)
    w = w_full[:, ::2]  # non-contiguous weight view
    torch.testing.assert_close(
        _run(op, "cpu", x, w, s, b), _run(op, "reference", x, w, s, b), **tol(torch.float32)
    )
    w, s, b = _weights(9, 40)
    assert _run(op, "cpu", torch.randn(0, 40), w, s, b).shape == (0, 9)
    assert _run(op, "cpu", torch.randn(2, 0, 40), w, s, b).shape == (2, 0, 9)
    w0, s0, b0 = _weights(9, 0)
    assert torch.equal(_run(op, "cpu", torch.randn(3, 0), w0, s0, b0), b0.expand(3, 9))  # K = 0: the bias


@pytest.mark.parametrize("op", LINEAR_OPS)
def test_linear_opcheck(op):
    x = torch.randn(3, 5, 24)
    w, s, b = _weights(10, 24)
    torch.library.opcheck(getattr(torch.ops.pyopt, op), (x, w, s, b))
    torch.library.opcheck(getattr(torch.ops.pyopt, op), (x[0], w, s, None))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"x": torch.randn(3, 7)}, ValueError, "in_features"),
        ({"x": torch.randn(3, 8).double()}, TypeError, "x must have dtype"),
        ({"w": torch.zeros(4, 8)}, TypeError, "w_q must be an int8"),
        ({"s": torch.ones(5)}, ValueError, "w_scales must have shape"),
        ({"s": torch.ones(4, dtype=torch.float64)}, TypeError, "w_scales must be a float32"),
        ({"b": torch.ones(3)}, ValueError, "bias must have shape"),
    ],
)
@pytest.mark.parametrize("op", LINEAR_OPS)
def test_linear_bad_inputs(op, kwargs, exc, match):
    args = {"x": torch.randn(3, 8), "w": torch.zeros(4, 8, dtype=torch.int8), "s": torch.ones(4), "b": None}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        getattr(torch.ops.pyopt, op)(args["x"], args["w"], args["s"], args["b"])


# ----------------------------------------------------------------------------------------------------------
# conv ops
# ----------------------------------------------------------------------------------------------------------
CONV_CASES = [  # (B, C, H, W, O, k, stride, padding, dilation)
    (2, 3, 9, 7, 5, 3, 1, 1, 1),
    (1, 8, 10, 10, 4, 1, 1, 0, 1),
    (2, 4, 11, 9, 6, 3, 2, 2, 2),
    (1, 5, 6, 6, 3, 1, 2, 0, 1),
    (1, 3, 4, 37, 4, 3, 1, 1, 1),  # W = 37: full SIMD vectors and a tail in each row
    # C, W >= 16: the NCHW -> NHWC quantiser's 16 x 16 byte transposes plus channel and pixel tails
    (2, 37, 7, 21, 19, 3, 1, 1, 1),
    (1, 32, 5, 16, 8, 3, 2, 3, 2),
    (1, 16, 9, 33, 6, 1, 1, 0, 1),
]


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_dynamic_cpu_vs_reference(isa, case, dtype):
    B, C, H, W, cout, k, st, p, d = case
    x = torch.randn(B, C, H, W).to(dtype)
    wq, ws, b = _weights(cout, C * k * k)
    args = (x, wq.view(cout, C, k, k), ws, b, [st, st], [p, p], [d, d])
    with pyopt.use_isa(isa):
        out = _run("int8_conv2d_dynamic", "cpu", *args)
    ref = _run("int8_conv2d_dynamic", "reference", *args)
    assert out.stride() == ref.stride()
    torch.testing.assert_close(out, ref, **tol(dtype))
    # channels-last input takes the same path
    torch.testing.assert_close(
        _run("int8_conv2d_dynamic", "cpu", x.to(memory_format=torch.channels_last), *args[1:]),
        ref,
        **tol(dtype),
    )


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_dynamic_bit_exact(isa, case, dtype):
    # every tier: exact int32 sums and the reference's epilogue; natively the im2col reads the zero-padded
    # NHWC activations straight into the GEMM's packing
    B, C, H, W, cout, k, st, p, d = case
    x = torch.randn(B, C, H, W).to(dtype)
    wq, ws, b = _weights(cout, C * k * k)
    args = (x, wq.view(cout, C, k, k), ws, b, [st, st], [p, p], [d, d])
    ref = _run("int8_conv2d_dynamic", "reference", *args)
    with pyopt.use_isa(isa):
        assert torch.equal(_run("int8_conv2d_dynamic", "cpu", *args), ref)
        xcl = x.to(memory_format=torch.channels_last)
        assert torch.equal(_run("int8_conv2d_dynamic", "cpu", xcl, *args[1:]), ref)


@pytest.mark.parametrize("isa", isa_params())
def test_conv_dynamic_asymmetric_geometry_bit_exact(isa):
    # different stride / padding / dilation per axis, padding wider than the kernel's reach
    x = torch.randn(2, 20, 13, 18)
    wq, ws, b = _weights(7, 20 * 3 * 2)
    args = (x, wq.view(7, 20, 3, 2), ws, b, [2, 1], [4, 1], [1, 3])
    ref = _run("int8_conv2d_dynamic", "reference", *args)
    with pyopt.use_isa(isa):
        assert torch.equal(_run("int8_conv2d_dynamic", "cpu", *args), ref)


@pytest.mark.parametrize("op", ["int8_conv2d_dynamic", "int8_conv2d_weight_only"])
def test_conv_opcheck_and_bad_inputs(op):
    wq, ws, b = _weights(4, 3 * 9)
    wq = wq.view(4, 3, 3, 3)
    fn = getattr(torch.ops.pyopt, op)
    torch.library.opcheck(fn, (torch.randn(2, 3, 8, 8), wq, ws, b, [1, 1], [1, 1], [1, 1]))
    with pytest.raises(ValueError, match="in_channels"):
        fn(torch.randn(2, 5, 8, 8), wq, ws, b, [1, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="smaller than"):
        fn(torch.randn(2, 3, 2, 2), wq, ws, b, [1, 1], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="stride"):
        fn(torch.randn(2, 3, 8, 8), wq, ws, b, [0, 1], [0, 0], [1, 1])


# ----------------------------------------------------------------------------------------------------------
# modules: accuracy vs float, protocol
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "min_db"), [("dynamic", 30.0), ("weight_only", 38.0)])
def test_linear_sqnr_vs_float(mode, min_db):
    lin = nn.Linear(512, 256)
    with torch.no_grad():
        lin.weight.normal_()
        lin.bias.normal_()
    x = torch.randn(64, 512)
    q = Int8Linear.from_float(lin, mode=mode)
    db = _sqnr_db(lin(x).detach(), q(x))
    assert db >= min_db, f"{mode}: SQNR {db:.1f} dB < {min_db}"


@pytest.mark.parametrize(("mode", "min_db"), [("dynamic", 30.0), ("weight_only", 38.0)])
def test_conv_sqnr_vs_float(mode, min_db):
    conv = nn.Conv2d(16, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(2, 16, 12, 12)
    q = Int8Conv2d.from_float(conv, mode=mode)
    db = _sqnr_db(conv(x).detach(), q(x))
    assert db >= min_db, f"{mode}: SQNR {db:.1f} dB < {min_db}"


def _modules():
    lin = nn.Linear(24, 10)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1)
    return [
        (Int8Linear.from_float(lin, "dynamic"), torch.randn(2, 5, 24)),
        (Int8Linear.from_float(nn.Linear(24, 10, bias=False), "weight_only"), torch.randn(3, 24)),
        (Int8Conv2d.from_float(conv, "dynamic"), torch.randn(2, 3, 9, 9)),
        (Int8Conv2d.from_float(conv, "weight_only"), torch.randn(2, 3, 9, 9)),
    ]


@pytest.mark.parametrize("idx", range(4))
def test_module_protocol_roundtrip(idx):
    mod, x = _modules()[idx]
    y = mod(x)
    assert MODULES[type(mod).__name__] is type(mod)
    assert all(t.dtype in (torch.int8, torch.float32) for t in mod.state_dict().values())
    fresh = type(mod).from_config(mod.extra_config())
    fresh.load_state_dict(mod.state_dict())
    assert torch.equal(fresh(x), y)
    assert torch.equal(copy.deepcopy(mod)(x), y)
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    again = type(mod).from_config(mod.extra_config())
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(again(x), y)


@pytest.mark.parametrize("idx", range(4))
def test_module_compile_fullgraph(idx):
    torch._dynamo.reset()
    mod, x = _modules()[idx]
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), mod(x))


def _conv_with_inf():
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight[1, 0, 2, 2] = float("-inf")
    return conv


def test_module_matches_float_layer_shapes_and_errors():
    lin = nn.Linear(16, 8)
    q = Int8Linear.from_float(lin)
    assert q(torch.randn(4, 16)).shape == (4, 8)
    with pytest.raises(ValueError, match="in_features"):
        q(torch.randn(4, 15))
    with pytest.raises(TypeError, match="x must have dtype"):
        q(torch.randint(0, 3, (4, 16)))
    with pytest.raises(ValueError, match="mode"):
        Int8Linear.from_float(lin, mode="int4")
    with pytest.raises(TypeError, match="nn.Linear"):
        Int8Linear.from_float(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="groups=1"):
        Int8Conv2d.from_float(nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(ValueError, match="padding_mode"):
        Int8Conv2d.from_float(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="in_features must be >= 0"):
        Int8Linear(-1, 4)
    with pytest.raises(TypeError, match="out_features must be an int"):
        Int8Linear(4, True)
    bad = nn.Linear(16, 8)
    with torch.no_grad():
        bad.weight[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        Int8Linear.from_float(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        Int8Conv2d.from_float(_conv_with_inf())


def test_conv_weight_only_matches_float_conv_of_dequantised_weight():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    q = Int8Conv2d.from_float(conv, mode="weight_only")
    w = q.weight.float() * q.weight_scales.view(-1, 1, 1, 1)
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(q(x), F.conv2d(x, w, q.bias, padding=1), **tol(torch.float32))


@pytest.mark.parametrize("op", LINEAR_OPS)
def test_linear_grad_wrt_x(op):
    # weight-only: exact gradient; dynamic: straight-through (same formula)
    w, s, b = _weights(6, 10)
    x = torch.randn(3, 10, requires_grad=True)
    out = getattr(torch.ops.pyopt, op)(x, w, s, b)
    out.pow(2).sum().backward()
    w_deq = w.float() * s.unsqueeze(1)
    torch.testing.assert_close(x.grad, (2 * out.detach()) @ w_deq, **tol(torch.float32))  # d sum(out^2)/dx


@pytest.mark.parametrize("op", ["int8_conv2d_dynamic", "int8_conv2d_weight_only"])
def test_conv_grad_wrt_x(op):
    w, s, b = _weights(4, 3 * 9)
    w = w.view(4, 3, 3, 3)
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    grad_out = torch.randn(2, 4, 5, 4)
    getattr(torch.ops.pyopt, op)(x, w, s, b, [2, 2], [1, 1], [1, 1]).backward(grad_out)
    w_deq = (w.float() * s.view(-1, 1, 1, 1)).requires_grad_(False)
    x_ref = x.detach().clone().requires_grad_()
    F.conv2d(x_ref, w_deq, b, 2, 1, 1).backward(grad_out)
    torch.testing.assert_close(x.grad, x_ref.grad, **tol(torch.float32))


# ----------------------------------------------------------------------------------------------------------
# regressions: tails, huge K, bad conv arguments, NaN, empty batches
# ----------------------------------------------------------------------------------------------------------
_GUARD_SCRIPT = r"""
import ctypes, mmap, sys, torch, pyopt
page = mmap.PAGESIZE
buf = mmap.mmap(-1, 2 * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
libc = ctypes.CDLL(None)
assert libc.mprotect(ctypes.c_void_p(addr + page), page, 0) == 0  # the second page: PROT_NONE
for isa in sys.argv[1:]:
    for k, n in ((1, 9), (3, 17), (7, 1), (5, 33), (67, 3)):
        w = torch.frombuffer(buf, dtype=torch.int8, count=n * k, offset=page - n * k).view(n, k)
        w.copy_(torch.randint(-128, 128, (n, k), dtype=torch.int8))
        s = torch.rand(n) + 0.1
        for m in (1, 2, 5, 17):
            x = torch.randn(m, k)
            with pyopt.use_isa(isa):
                got = [torch.ops.pyopt.int8_linear_dynamic(x, w, s, None),
                       torch.ops.pyopt.int8_linear_weight_only(x, w, s, None)]
            with pyopt.use_backend("reference"):
                want = [torch.ops.pyopt.int8_linear_dynamic(x, w, s, None),
                        torch.ops.pyopt.int8_linear_weight_only(x, w, s, None)]
            assert torch.equal(got[0], want[0]), (isa, k, n, m)
            torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-3)  # float32 sums of |terms| <= 381
print("ok")
"""


def test_weights_ending_at_a_guard_page_are_never_read_past():
    """in_features == 1 and every tail shape, the weight's last byte right before a PROT_NONE page: a read past
    the end of w_q would kill the (separate) process with SIGSEGV, on every ISA this CPU has."""
    import subprocess
    import sys

    isas = [p.values[0] for p in isa_params()]
    run = subprocess.run(
        [sys.executable, "-c", _GUARD_SCRIPT, *isas], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


@pytest.mark.parametrize("isa", isa_params())
def test_dynamic_sum_beyond_int32_is_exact(isa):
    """K = 140,000 products of 127 * 127 overflow an int32 accumulator; the result must equal the reference."""
    k = 140_000
    x, w, s = torch.ones(2, k), torch.full((3, k), 127, dtype=torch.int8), torch.ones(3)
    with pyopt.use_backend("reference"):
        want = torch.ops.pyopt.int8_linear_dynamic(x, w, s, None)
    with pyopt.use_isa(isa):
        got = torch.ops.pyopt.int8_linear_dynamic(x, w, s, None)
    assert want[0, 0].item() == pytest.approx(127 * 127 * k / 127, rel=1e-6)  # sx = 1/127
    assert torch.equal(got, want)


@pytest.mark.parametrize("device,backend", backend_params("int8_conv2d_dynamic"))
def test_conv_bad_stride_padding_dilation_raise(device, backend):
    x, w, s = (
        torch.randn(1, 2, 5, 5, device=device),
        torch.ones(3, 2, 3, 3, dtype=torch.int8, device=device),
        None,
    )
    s = torch.ones(3, device=device)
    for kwargs in ({"stride": [0, 1]}, {"padding": [-1, 0]}, {"dilation": [1, 0]}, {"stride": [1]}):
        args = {"stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], **kwargs}
        with pyopt.use_backend(backend), pytest.raises(ValueError, match=next(iter(kwargs))):
            torch.ops.pyopt.int8_conv2d_dynamic(
                x, w, s, None, args["stride"], args["padding"], args["dilation"]
            )


@pytest.mark.parametrize("device,backend", backend_params("int8_conv2d_dynamic"))
@pytest.mark.parametrize("channel", [0, 1, 2])
def test_conv_nan_in_any_channel_propagates(device, backend, channel):
    x = torch.randn(2, 3, 6, 6, device=device)
    x[0, channel, 2, 3] = float("nan")
    w, s = (
        torch.randint(-127, 128, (4, 3, 3, 3), dtype=torch.int8, device=device),
        torch.rand(4, device=device),
    )
    with pyopt.use_backend(backend):
        got = torch.ops.pyopt.int8_conv2d_dynamic(x, w, s, None, [1, 1], [1, 1], [1, 1])
    with pyopt.use_backend("reference"):
        want = torch.ops.pyopt.int8_conv2d_dynamic(x, w, s, None, [1, 1], [1, 1], [1, 1])
    assert torch.isnan(got[0]).all() and torch.isnan(want[0]).all()  # the sample's scale is NaN
    assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("device,backend", backend_params("int8_conv2d_dynamic"))
@pytest.mark.parametrize("op", ["int8_conv2d_dynamic", "int8_conv2d_weight_only"])
def test_conv_empty_batch(device, backend, op):
    x, w, s = (
        torch.randn(0, 3, 6, 6, device=device),
        torch.ones(4, 3, 3, 3, dtype=torch.int8, device=device),
        None,
    )
    s = torch.ones(4, device=device)
    with pyopt.use_backend(backend):
        y = getattr(torch.ops.pyopt, op)(x, w, s, None, [1, 1], [1, 1], [1, 1])
    assert y.shape == (0, 4, 6, 6)
