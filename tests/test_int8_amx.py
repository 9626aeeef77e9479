"""The AMX tier: the tile emulator against an int64 matmul, the AMX int8 GEMM on the emulator against the
reference bit for bit (the same packing, blocking, remainder, K-split and epilogue code that runs on AMX
hardware), the hardware kernel where the CPU has AMX, and the tier's detection falling back cleanly elsewhere."""

import contextlib
import itertools
import os
import subprocess
import sys
import threading

import pytest
import torch

import pyopt
from pyopt.ops import native

EXT = native.cpu_ext()
pytestmark = pytest.mark.skipif(EXT is None, reason="needs the C++ extension pyopt._C")
HAVE_AMX = native.detected_isa() == "amx"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT32 = 2**32


def _wrap32(t):
    """int64 -> the int32 it wraps to."""
    return ((t + 2**31) % INT32 - 2**31).to(torch.int32)


# ----------------------------------------------------------------------------------------------------------
# the emulator: one tdpbssd / tdpbusd on tile-shaped tensors
# ----------------------------------------------------------------------------------------------------------
def _tile_dp_ref(a, b, c):
    """c[m, n] + sum_{k, i} a[m, 4k + i] * b[k, 4n + i] in int64, wrapped to int32 (the hardware's arithmetic)."""
    m, kq = a.shape[0], b.shape[0]
    n = c.shape[1]
    a4 = a.to(torch.int64).reshape(m, kq * 4)
    b4 = b.to(torch.int64).reshape(kq, n, 4).permute(0, 2, 1).reshape(kq * 4, n)  # row 4k + i, column n
    return _wrap32(c.to(torch.int64) + a4 @ b4)


@pytest.mark.parametrize("op", ["tdpbssd", "tdpbusd"])
@pytest.mark.parametrize(("m", "kq", "n"), list(itertools.product([1, 7, 16], [1, 5, 16], [1, 9, 16])))
def test_emulator_tile_dp_matches_int64_matmul(op, m, kq, n):
    a_dtype = torch.int8 if op == "tdpbssd" else torch.uint8
    lo, hi = (-128, 128) if a_dtype == torch.int8 else (0, 256)
    a = torch.randint(lo, hi, (m, 4 * kq), dtype=torch.int16).to(a_dtype)
    b = torch.randint(-128, 128, (kq, 4 * n), dtype=torch.int8)
    c = torch.randint(-(2**31), 2**31 - 1, (m, n), dtype=torch.int64).to(torch.int32)
    out = EXT.amx_emulated_tile_dp(op, a, b, c)
    assert out.dtype == torch.int32 and torch.equal(out, _tile_dp_ref(a, b, c))


def test_emulator_signedness_and_wrapping():
    # 0xff is 255 for tdpbusd's unsigned a and -1 for tdpbssd; sums past int32 wrap, never saturate
    a = torch.full((16, 64), 255, dtype=torch.uint8)
    b = torch.full((16, 64), 127, dtype=torch.int8)
    c = torch.full((16, 16), 2**31 - 100, dtype=torch.int32)
    u = EXT.amx_emulated_tile_dp("tdpbusd", a, b, c)
    s = EXT.amx_emulated_tile_dp("tdpbssd", a.view(torch.int8), b, c)
    assert torch.equal(u, _wrap32(torch.full((16, 16), 2**31 - 100 + 64 * 255 * 127)))
    assert torch.equal(s, torch.full((16, 16), 2**31 - 100 - 64 * 127, dtype=torch.int32))
    assert int(u[0, 0]) < 0  # wrapped


def test_emulator_strided_rows():
    # tileloadd reads rows at a byte stride: a view of every other 64-byte row of a wider tensor
    wide = torch.randint(-128, 128, (16, 128), dtype=torch.int8)
    a = wide[:, 32:96]
    b = torch.randint(-128, 128, (16, 64), dtype=torch.int8)
    c = torch.zeros(16, 16, dtype=torch.int32)
    assert a.stride(0) == 128
    assert torch.equal(EXT.amx_emulated_tile_dp("tdpbssd", a, b, c), _tile_dp_ref(a, b, c))


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "c_shape", "match"),
    [
        ((17, 64), (16, 64), (17, 16), "at most 8 tiles of 16 x 64"),  # 17 rows
        ((16, 68), (17, 64), (16, 16), "at most 8 tiles of 16 x 64"),  # 68 bytes per row
        ((16, 64), (15, 64), (16, 16), "shapes do not match"),  # a.colsb != 4 * b.rows
        ((8, 64), (16, 64), (16, 16), "shapes do not match"),  # c.rows != a.rows
        ((16, 64), (16, 32), (16, 16), "shapes do not match"),  # c.colsb != b.colsb
        ((16, 6), (2, 64), (16, 16), "shapes do not match"),  # a.colsb not a multiple of 4
        ((0, 64), (16, 64), (0, 16), "not configured"),
    ],
)
def test_emulator_refuses_what_the_hardware_faults_on(a_shape, b_shape, c_shape, match):
    a = torch.zeros(a_shape, dtype=torch.int8)
    b = torch.zeros(b_shape, dtype=torch.int8)
    c = torch.zeros(c_shape, dtype=torch.int32)
    with pytest.raises(RuntimeError, match=match):
        EXT.amx_emulated_tile_dp("tdpbssd", a, b, c)


def test_emulator_binding_checks_arguments():
    a, b, c = (
        torch.zeros(16, 64, dtype=torch.int8),
        torch.zeros(16, 64, dtype=torch.int8),
        torch.zeros(16, 16),
    )
    with pytest.raises(TypeError, match="c must be int32"):
        EXT.amx_emulated_tile_dp("tdpbssd", a, b, c)
    with pytest.raises(TypeError, match="a must be uint8"):
        EXT.amx_emulated_tile_dp("tdpbusd", a, b, c.int())
    with pytest.raises(ValueError, match="op must be"):
        EXT.amx_emulated_tile_dp("tdpbf16ps", a, b, c.int())
    with pytest.raises(ValueError, match="a must be a 2-D"):
        EXT.amx_emulated_tile_dp("tdpbssd", a.reshape(16, 4, 16), b, c.int())


# ----------------------------------------------------------------------------------------------------------
# the AMX int8 GEMM on the emulator vs the reference, bit for bit
# ----------------------------------------------------------------------------------------------------------
def _operands(m, k, n, dtype=torch.float32, bias=True):
    x = (torch.randn(m, k) * 3).to(dtype)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)  # any int8, -128 included
    s = torch.rand(n) * 0.02 + 1e-3
    b = torch.randn(n) if bias else None
    return x, w, s, b


def _reference(x, w, s, b):
    with pyopt.use_backend("reference"):
        return torch.ops.pyopt.int8_linear_dynamic(x, w, s, b)


def _check_emulated(x, w, s, b):
    out = EXT.amx_emulated_gemm(x, w, s, b)
    ref = _reference(x, w, s, b)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.equal(out, ref)


SMALL = [1, 7, 16, 17, 33]


# every tail of the 16-row / 32-row blocks, the 64-byte k tiles (K not a multiple of 4 either) and the
# 32-column panel pairs (N not a multiple of 16)
@pytest.mark.parametrize(("m", "k", "n"), list(itertools.product(SMALL, SMALL, SMALL)))
def test_emulated_gemm_bit_exact_small(m, k, n):
    _check_emulated(*_operands(m, k, n, bias=(m + k + n) % 2 == 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(15, 67, 15), (67, 15, 67), (1003, 67, 35), (67, 1003, 33), (33, 67, 1003), (40, 130, 48), (2, 1, 1)],
)
def test_emulated_gemm_bit_exact_larger(dtype, m, k, n):
    _check_emulated(*_operands(m, k, n, dtype, bias=n % 2 == 1))


@pytest.mark.parametrize("threads", [1, 3])
def test_emulated_gemm_threads(threads):
    # items split over rows and over 32-column panel pairs; each thread configures and releases its own tiles
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_emulated(*_operands(300, 70, 200))
    finally:
        torch.set_num_threads(prev)


def test_emulated_gemm_k_split_past_int32():
    # K > kMaxExactK = 132104: sums of 127 * -128 over K pass -2^31, so the kernel must add its int32 tile sums
    # of K chunks in int64 (a wrapping int32 sum would give a positive result here)
    m, k, n = 3, 140003, 5
    x = torch.ones(m, k)  # quantises to 127 everywhere
    w = torch.full((n, k), -128, dtype=torch.int8)
    s = torch.full((n,), 1e-6)
    out = EXT.amx_emulated_gemm(x, w, s, None)
    assert (out < 0).all()
    assert torch.equal(out, _reference(x, w, s, None))
    # and random values, with a bias and a low-precision output
    _check_emulated(*_operands(m, k, n, torch.bfloat16))


def test_emulated_gemm_shapes_and_layouts():
    x, w, s, b = _operands(6, 40, 9)
    _check_emulated(x.reshape(2, 3, 40), w, s, b)  # leading dims
    _check_emulated(torch.randn(40, 6).t(), w, s, b)  # non-contiguous activations
    _check_emulated(torch.randn(0, 40), w, s, b)  # no rows
    _check_emulated(torch.randn(4, 0), w[:, :0], s, b)  # K == 0: the bias alone
    _check_emulated(x, w, s, b.half())  # a float16 bias


def test_emulated_gemm_checks_arguments():
    x, w, s, b = _operands(4, 8, 3)
    with pytest.raises(ValueError, match="last dim must equal in_features"):
        EXT.amx_emulated_gemm(torch.randn(4, 9), w, s, b)
    with pytest.raises(TypeError, match="w_q must be an int8"):
        EXT.amx_emulated_gemm(x, w.float(), s, b)
    with pytest.raises(ValueError, match="w_scales must have shape"):
        EXT.amx_emulated_gemm(x, w, s[:2], b)


# ----------------------------------------------------------------------------------------------------------
# the real ops (linear, conv, the modules) reaching the AMX kernel on the emulator (pyopt._C.amx_set_emulation)
# ----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _amx_emulation():
    previous = EXT.amx_set_emulation(True)
    try:
        with pyopt.use_backend("cpu"):
            yield
    finally:
        EXT.amx_set_emulation(previous)


NATIVE_TIER = native.ISA_NAMES.index(native.detected_isa()) >= native.ISA_NAMES.index("avx2")
requires_native_gemm = pytest.mark.skipif(not NATIVE_TIER, reason="the native int8 GEMMs need AVX2 or better")


@requires_native_gemm
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("m", "k", "n"), [(2, 1, 5), (17, 100, 33), (1, 70, 9), (65, 67, 40), (3, 140003, 5)]
)
def test_linear_op_through_emulated_amx(dtype, m, k, n):
    x, w, s, b = _operands(m, k, n, dtype)
    with _amx_emulation():
        out = torch.ops.pyopt.int8_linear_dynamic(x.reshape(1, m, k), w, s, b)
    assert torch.equal(out, _reference(x.reshape(1, m, k), w, s, b))


@requires_native_gemm
@pytest.mark.parametrize(
    "case",  # (B, C, H, W, O, k, stride, padding, dilation): tails of the row blocks and column pairs
    [
        (2, 3, 9, 7, 5, 3, 1, 1, 1),
        (2, 4, 11, 9, 6, 3, 2, 2, 2),
        (1, 3, 4, 37, 40, 3, 1, 1, 1),
        (1, 8, 10, 10, 4, 1, 1, 0, 1),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_op_through_emulated_amx(case, dtype):
    B, C, H, W, cout, k, st, p, d = case
    x = torch.randn(B, C, H, W).to(dtype)
    w = torch.randint(-128, 128, (cout, C, k, k), dtype=torch.int8)
    s, b = torch.rand(cout) / 50, torch.randn(cout)
    args = (x, w, s, b, [st, st], [p, p], [d, d])
    with _amx_emulation():
        out = torch.ops.pyopt.int8_conv2d_dynamic(*args)
    with pyopt.use_backend("reference"):
        ref = torch.ops.pyopt.int8_conv2d_dynamic(*args)
    assert torch.equal(out, ref)


@requires_native_gemm
def test_modules_through_emulated_amx():
    from torch import nn

    from pyopt.nn import Int8Conv2d, Int8Linear

    lin = Int8Linear.from_float(nn.Linear(37, 19), "dynamic").eval()
    conv = Int8Conv2d.from_float(nn.Conv2d(3, 20, 3, padding=1), "dynamic").eval()
    x, xc = torch.randn(5, 37), torch.randn(2, 3, 8, 9)
    with torch.inference_mode():
        with pyopt.use_backend("reference"):
            ref, refc = lin(x), conv(xc)
        with _amx_emulation():
            out, outc = lin(x), conv(xc)
    assert torch.equal(out, ref) and torch.equal(outc, refc)


def test_emulation_hook_is_per_thread_and_off_by_default():
    assert EXT.amx_set_emulation(False) is False
    assert EXT.amx_set_emulation(True) is False
    seen = []
    t = threading.Thread(target=lambda: seen.append(EXT.amx_set_emulation(False)))
    t.start()
    t.join()
    assert seen == [False]  # another thread does not see this one's hook
    assert EXT.amx_set_emulation(False) is True


# ----------------------------------------------------------------------------------------------------------
# the hardware (only where the CPU has AMX and the OS grants it)
# ----------------------------------------------------------------------------------------------------------
requires_amx = pytest.mark.skipif(
    not HAVE_AMX, reason="needs a CPU with AMX (amx_int8) and the OS's permission"
)


@requires_amx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "k", "n"), [(2, 1, 5), (17, 67, 33), (1003, 130, 35), (64, 4099, 130)])
def test_hardware_gemm_bit_exact(dtype, m, k, n):
    x, w, s, b = _operands(m, k, n, dtype)
    ref = _reference(x, w, s, b)
    assert torch.equal(EXT.amx_emulated_gemm(x, w, s, b, emulated=False), ref)
    with pyopt.use_isa("amx"), pyopt.use_backend("cpu"):
        assert torch.equal(torch.ops.pyopt.int8_linear_dynamic(x, w, s, b), ref)


@requires_amx
def test_hardware_gemm_k_split():
    x, w, s, b = torch.ones(3, 140003), torch.full((5, 140003), -128, dtype=torch.int8), torch.ones(5), None
    assert torch.equal(EXT.amx_emulated_gemm(x, w, s, b, emulated=False), _reference(x, w, s, b))


@pytest.mark.skipif(HAVE_AMX, reason="checks the refusal on a machine without AMX")
def test_hardware_gemm_refused_without_amx():
    x, w, s, b = _operands(4, 8, 3)
    with pytest.raises(ValueError, match="needs a CPU with AMX"):
        EXT.amx_emulated_gemm(x, w, s, b, emulated=False)


# ----------------------------------------------------------------------------------------------------------
# detection and fallback
# ----------------------------------------------------------------------------------------------------------
def test_amx_status_consistent_with_tier():
    st = native.amx_status()
    assert set(st) == {"amx_tile", "amx_int8", "amx_bf16", "os_enabled", "permitted"}
    assert HAVE_AMX == (
        st["amx_tile"]
        and st["amx_int8"]
        and st["permitted"]
        and native.ISA_NAMES[EXT.detected_isa()] == "amx"
    )
    if HAVE_AMX:
        assert st["os_enabled"]
    with pyopt.use_isa("amx"):  # a cap above the CPU's tier is harmless
        assert native.active_isa() == native.detected_isa()


def test_env_amx_on_any_machine_falls_back_cleanly():
    # PYOPT_CPU_ISA=amx where AMX is missing (or not granted) runs the best tier there, never a tile instruction
    code = (
        "import torch, pyopt\n"
        "from pyopt.ops import native\n"
        "x, w = torch.randn(33, 70), torch.randint(-128, 128, (20, 70), dtype=torch.int8)\n"
        "s, b = torch.rand(20) / 50, torch.randn(20)\n"
        "with pyopt.use_backend('cpu'):\n"
        "    out = torch.ops.pyopt.int8_linear_dynamic(x, w, s, b)\n"
        "with pyopt.use_backend('reference'):\n"
        "    ref = torch.ops.pyopt.int8_linear_dynamic(x, w, s, b)\n"
        "print(native.detected_isa(), native.active_isa(), bool(torch.equal(out, ref)))\n"
    )
    env = dict(os.environ, PYOPT_CPU_ISA="amx")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    detected, active, exact = res.stdout.split()[-3:]
    assert detected == active == native.detected_isa()
    assert exact == "True"


def test_info_shows_amx_line():
    res = subprocess.run(
        [sys.executable, "-m", "pyopt", "info"], capture_output=True, text=True, timeout=300, cwd=os.getcwd()
    )
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("AMX"))
    st = native.amx_status()
    assert ("not on this CPU" in line) == (not st["amx_tile"])
    assert f"CPU ISA        : {native.detected_isa()}" in res.stdout
