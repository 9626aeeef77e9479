"""quant family: reference vs torch's quantizers (bit-exact), every backend / ISA vs reference (bit-exact)."""

import pytest
import torch
from conftest import backend_params, isa_params, requires_cuda
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

import pyopt
from pyopt._rules import fma_f32

pytestmark = pytest.mark.filterwarnings("ignore:.*quantize.*deprecated")

QDTYPES = {torch.int8: torch.qint8, torch.uint8: torch.quint8}
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
SPECIALS = [float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e-45, -0.0, 0.0, 1e10, -1e10]


def _torch_tie_rule() -> str | None:
    """None when the installed torch's CPU quantizers round ties by the rules pyopt follows (measured on
    torch 2.13 CPU, README "Rounding rules"); otherwise the rule torch was seen to use.

    torch is not consistent here: torch 2.11 (cu130 build, Intel Xeon) rounds rne(float32(x * inv)) + zp
    for both per-tensor and per-channel, whatever ATEN_CPU_CAPABILITY (bench/probe_torch_rounding.py, run on
    the H200 box); torch 2.13 CPU uses fma(x, inv, zp) per tensor. The tie tests compare with torch only
    where it follows pyopt's rules; on torch 2.13 (the version the rules were measured on, and CI's) they
    never skip, so a regression in pyopt cannot hide behind this.
    """
    if torch.__version__.startswith("2.13"):
        return None
    g = torch.Generator().manual_seed(1)
    scale, zp = 0.0371, 3
    k = torch.randint(-100, 100, (3000,), generator=g, dtype=torch.float64)
    x = ((k + 0.5) * scale).float()
    x = torch.cat([x, x.nextafter(x + 1), x.nextafter(x - 1)])
    inv = 1.0 / torch.tensor(scale, dtype=torch.float32)
    got = torch.quantize_per_tensor(x, scale, zp, torch.qint8).int_repr().float()
    fma_rule = (x.double() * inv.double() + zp).float().round()  # x*inv is exact in float64
    if torch.equal(got, fma_rule):
        return None
    if torch.equal(got, (x * inv).round() + zp):
        return "rne(float32(x * inv)) + zp"
    return "a rule other than fma(x, inv, zp)"


TORCH_TIE_RULE = _torch_tie_rule()
requires_torch_tie_rule = pytest.mark.skipif(
    TORCH_TIE_RULE is not None,
    reason=f"torch {torch.__version__} on this CPU rounds quantize ties as {TORCH_TIE_RULE}, not by the rules "
    "pyopt follows (torch 2.13 CPU's); see README 'Rounding rules'",
)


def assert_bits_equal(a, b, x=None):
    """Exact equality, NaN payloads and signed zeros included (floats compared as their bit patterns)."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            assert_bits_equal(u, v)
        return
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    a, b = a.cpu(), b.cpu()
    if a.is_floating_point():
        bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}[a.dtype]
        a, b = a.contiguous().view(bits), b.contiguous().view(bits)
    mismatch = (a != b).nonzero()
    if mismatch.numel():
        idx = tuple(mismatch[:4].t())
        shown = f"got {a[idx].tolist()} want {b[idx].tolist()}"
        if x is not None:
            shown += f" for x = {[float.hex(v) for v in x.cpu().double()[idx].tolist()]}"
        raise AssertionError(f"{len(mismatch)} mismatches, first at {mismatch[0].tolist()}: {shown}")


def with_specials(x):
    """x with every special value written at a few scattered places."""
    flat = x.reshape(-1)
    if flat.numel():
        idx = torch.randperm(flat.numel())[: 2 * len(SPECIALS)]
        flat[idx] = torch.tensor(SPECIALS * 2, dtype=x.dtype)[: len(idx)]
    return x


def ties(scale: torch.Tensor, zp: torch.Tensor, n: int) -> torch.Tensor:
    """float32 values whose quantization lands on .5 ties (and next to them), per element's scale/zp."""
    k = torch.randint(-140, 140, (n,), dtype=torch.float64)
    base = ((k + 0.5) * scale.double()).float()
    # the neighbours of an exact tie: where fma and product rounding disagree
    return torch.stack([base, base.nextafter(base + 1), base.nextafter(base - 1)], 0).reshape(-1)


# ----------------------------------------------------------------------------------------------------------
# reference vs torch (the measured rules)
# ----------------------------------------------------------------------------------------------------------
@requires_torch_tie_rule
@pytest.mark.parametrize("dtype", list(QDTYPES))
def test_per_tensor_reference_matches_torch_on_ties(dtype):
    disagreements = 0
    for scale in [0.0371, 2.0**-7, 1.7e-3, 0.1, 3.3, 0.05123456789]:  # float32-exact and not
        zp = 3 if dtype == torch.int8 else 131
        x = ties(torch.tensor(scale), torch.tensor(zp), 3000)
        got = pyopt.ops.reference.quant.quantize_per_tensor_ref(x, scale, zp, dtype)
        assert_bits_equal(got, torch.quantize_per_tensor(x, scale, zp, QDTYPES[dtype]).int_repr())
        inv = 1.0 / torch.tensor(scale, dtype=torch.float32)
        disagreements += ((x * inv + zp).round() != fma_f32(x, inv, float(zp)).round()).sum().item()
    assert disagreements > 0, "the tie cases must separate the fma rule from the product rule"


@requires_torch_tie_rule
@pytest.mark.parametrize("dtype", list(QDTYPES))
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_reference_matches_torch_on_ties(dtype, axis):
    C = 11
    scales = torch.exp(torch.empty(C, dtype=torch.float64).uniform_(-8, 2))
    zps = torch.randint(*(-128, 128) if dtype == torch.int8 else (0, 256), (C,))
    x = torch.stack([ties(scales[c], zps[c], 400) for c in range(C)], axis)
    got = pyopt.ops.reference.quant.quantize_per_channel_ref(x, scales, zps, axis, dtype)
    want = torch.quantize_per_channel(x, scales, zps, axis, QDTYPES[dtype]).int_repr()
    assert_bits_equal(got, want)
    inv = pyopt._rules.channel_view(1.0 / scales.float(), axis, 2)
    fma_rule = fma_f32(x, inv, pyopt._rules.channel_view(zps.double(), axis, 2)).round()
    assert (fma_rule.clamp(*pyopt._rules.QRANGE[dtype]).to(dtype) != want).any()


@pytest.mark.parametrize("dtype", list(QDTYPES))
def test_special_values_reference_matches_torch(dtype):
    x = torch.tensor(SPECIALS * 3 + [127.5, -128.5, 254.5, 0.5, 1.5, 2.5], dtype=torch.float32)
    zp = 3
    got = pyopt.ops.reference.quant.quantize_per_tensor_ref(x, 1.0, zp, dtype)
    assert_bits_equal(got, torch.quantize_per_tensor(x, 1.0, zp, QDTYPES[dtype]).int_repr())
    assert got[0] == pyopt._rules.QRANGE[dtype][1]  # NaN -> qmax per tensor
    x2 = x.reshape(4, 9)
    s = torch.tensor([1.0, 0.5, 2.0, 0.3], dtype=torch.float64)
    z = torch.tensor([3, 0, 5, 7])
    got = pyopt.ops.reference.quant.quantize_per_channel_ref(x2, s, z, 0, dtype)
    assert_bits_equal(got, torch.quantize_per_channel(x2, s, z, 0, QDTYPES[dtype]).int_repr())
    assert got.reshape(-1)[0] == 0  # NaN -> 0 per channel


@pytest.mark.parametrize("dtype", list(QDTYPES))
def test_dequantize_reference_matches_torch(dtype):
    x = torch.randn(13, 1003) * 4
    for scale in [0.0371, 0.05123456789]:
        qt = torch.quantize_per_tensor(x, scale, 5, QDTYPES[dtype])
        got = pyopt.ops.reference.quant.dequantize_per_tensor_ref(qt.int_repr(), scale, 5, torch.float32)
        assert_bits_equal(got, qt.dequantize())
    for scales in [torch.rand(13, dtype=torch.float64) + 0.01, (torch.rand(13) + 0.01).double()]:
        zps = torch.randint(0, 100, (13,))
        qt = torch.quantize_per_channel(x, scales, zps, 0, QDTYPES[dtype])
        got = pyopt.ops.reference.quant.dequantize_per_channel_ref(
            qt.int_repr(), scales, zps, 0, torch.float32
        )
        assert_bits_equal(got, qt.dequantize())


# ----------------------------------------------------------------------------------------------------------
# every backend vs reference
# ----------------------------------------------------------------------------------------------------------
SHAPES = [(1,), (7,), (1003,), (3, 7, 65), (2, 130), (0, 5)]


def make_x(shape, dtype, device, noncontig=False):
    if noncontig:
        x = (torch.randn(*reversed(shape)) * 3).to(dtype).transpose(0, -1) if len(shape) > 1 else None
        x = x if x is not None else (torch.randn(shape[0] * 2) * 3).to(dtype)[::2]
    else:
        x = (torch.randn(shape) * 3).to(dtype)
    return with_specials(x).to(device)


def qparams(C, dtype, device, float64=True):
    """Fresh random (scales, zero_points), the same for the same arguments (both backends see them)."""
    gen = torch.Generator().manual_seed(C * 2 + float64)
    scales = torch.rand(C, dtype=torch.float64, generator=gen) * 0.1 + 0.005
    scales = scales if float64 else scales.float()
    lo, hi = pyopt._rules.QRANGE[dtype]
    return scales.to(device), torch.randint(lo, hi + 1, (C,), generator=gen).to(device)


def all_ops(x, dtype, axis):
    """Every op on x (and on its quantization), as the tuple compared across backends."""
    C = x.shape[axis]
    s64, z = qparams(C, dtype, x.device)
    s32, _ = qparams(C, dtype, x.device, float64=False)
    out = [pyopt.quantize_per_tensor(x, 0.0371, 3, dtype), pyopt.quantize_per_channel(x, s64, z, axis, dtype)]
    q = out[1]
    if x.shape[-1] % 5 == 0 or x.shape[-1] % 13 == 0:
        gs = 5 if x.shape[-1] % 5 == 0 else 13
        out += list(pyopt.quantize_per_group(x, gs, dtype, symmetric=dtype == torch.int8))
        finite = torch.isfinite(out[-2]) & (out[-2] > 0)
        if bool(finite.all()):
            out.append(pyopt.dequantize_per_group(out[-3], out[-2], out[-1], gs))
    if dtype == torch.int8:
        out += list(pyopt.quantize_per_token(x))
    for od in FLOATS:
        out += [
            pyopt.dequantize_per_tensor(q, 0.0371, 3, od),
            pyopt.dequantize_per_channel(q, s64, z, axis, od),
            pyopt.dequantize_per_channel(q, s32, z, axis, od),
        ]
    return out


def run_ops(backend, fn, *args):
    with pyopt.use_backend(backend):
        got = fn(*args)
    with pyopt.use_backend("reference"):
        want = fn(*args)
    assert_bits_equal(got, want)


@pytest.mark.parametrize("device,backend", backend_params("quantize_per_tensor"))
@pytest.mark.parametrize("dtype", list(QDTYPES))
@pytest.mark.parametrize("xdtype", FLOATS)
def test_backend_matches_reference(device, backend, dtype, xdtype):
    shapes = SHAPES if backend != "triton" else [(7,), (3, 7, 65), (0, 5)]
    for shape in shapes:
        for axis in range(len(shape)):
            torch.manual_seed(len(shape) * 10 + axis)
            run_ops(backend, all_ops, make_x(shape, xdtype, device), dtype, axis)
    run_ops(backend, all_ops, make_x((9, 26), xdtype, device, noncontig=True), dtype, 1)


@pytest.mark.parametrize("isa", isa_params())
@pytest.mark.parametrize("xdtype", FLOATS)
def test_every_isa_matches_reference(isa, xdtype):
    if "cpu" not in pyopt.available_backends("cpu"):
        pytest.skip("C++ CPU kernels not built")
    for shape, axis in [
        ((1,), 0),
        ((1003,), 0),
        ((3, 7, 65), 1),
        ((5, 200), 0),
        ((4, 300), 1),
        ((2, 130), 1),
    ]:
        x = make_x(shape, xdtype, "cpu")
        for dtype in QDTYPES:
            with pyopt.use_isa(isa):
                run_ops("cpu", all_ops, x, dtype, axis)
    # a long input crosses many OpenMP chunks and vector blocks
    x = make_x((3, 70001), torch.float32, "cpu")
    with pyopt.use_isa(isa):
        run_ops("cpu", all_ops, x, torch.int8, 0)
        run_ops("cpu", all_ops, x, torch.uint8, 1)  # 70001 channels of 1 element: a long channel period


@pytest.mark.parametrize(
    "isa", [p for p in isa_params() if p.values[0].startswith(("avx512", "avx2"))] or isa_params()[-1:]
)
def test_large_outputs_match_reference(isa):
    """Outputs of >= 4 MB take the streaming-store path of the C++ kernels (AVX-512 and AVX2)."""
    if "cpu" not in pyopt.available_backends("cpu"):
        pytest.skip("C++ CPU kernels not built")
    x = make_x((1030, 4160), torch.float32, "cpu")
    s, z = qparams(1030, torch.int8, "cpu", float64=False)

    def ops(x):
        q = pyopt.quantize_per_channel(x, s, z, 0)
        qg, sg, zg = pyopt.quantize_per_group(x.nan_to_num(), 32)  # groups shorter than a vector block
        return [
            q,
            pyopt.quantize_per_tensor(x, 0.03, 1),
            pyopt.dequantize_per_channel(q, s, z, 0),
            qg,
            sg,
            zg,
            pyopt.dequantize_per_group(qg, sg, zg, 32),
        ]

    with pyopt.use_isa(isa):
        run_ops("cpu", ops, x)


@pytest.mark.parametrize("device,backend", backend_params("quantize_per_tensor"))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(0, 70), min_size=1, max_size=3),
    xdtype=st.sampled_from(FLOATS),
    dtype=st.sampled_from(list(QDTYPES)),
    data=st.data(),
)
def test_random_shapes_match_reference(device, backend, shape, xdtype, dtype, data):
    if backend == "reference":
        return  # the oracle itself
    if backend == "triton":  # interpreted: keep it small
        shape = [min(d, 9) for d in shape]
    axis = data.draw(st.integers(0, len(shape) - 1))
    noncontig = len(shape) > 1 and data.draw(st.booleans())
    x = make_x(tuple(shape), xdtype, device, noncontig)
    run_ops(backend, all_ops, x, dtype, axis)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("dtype", list(QDTYPES))
def test_per_group_qparams_are_choose_qparams_per_group(group_size, symmetric, dtype):
    x = torch.randn(3, 4 * group_size) + 0.3
    q, scales, zps = pyopt.quantize_per_group(x, group_size, dtype, symmetric)
    for r in range(3):
        for g in range(4):
            s, z = pyopt.choose_qparams(
                x[r, g * group_size : (g + 1) * group_size], dtype=dtype, symmetric=symmetric
            )
            assert scales[r, g].item() == s.item() and zps[r, g].item() == z.item()
    back = pyopt.dequantize_per_group(q, scales, zps, group_size)
    assert ((back - x).abs() <= scales.repeat_interleave(group_size, -1) * 0.5001).all()


def test_per_token_formula():
    x = torch.randn(5, 77, dtype=torch.float32) * 3
    x[1] = 0.0
    q, scales = pyopt.quantize_per_token(x)
    want_s = x.abs().amax(-1, keepdim=True) / 127
    want_s[1] = 1.0
    assert_bits_equal(scales, want_s)
    want_q = (x * (1.0 / want_s)).round().clamp(-127, 127).to(torch.int8)
    assert_bits_equal(q, want_q)


# ----------------------------------------------------------------------------------------------------------
# choose_qparams vs torch.ao observers
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(QDTYPES))
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("shift", [0.0, 5.0, -5.0, "tiny", "empty"])
def test_choose_qparams_matches_observers(dtype, symmetric, reduce_range, shift):
    if symmetric and reduce_range and dtype == torch.uint8:
        pytest.skip("torch.ao refuses reduce_range for symmetric quint8")
    x = {"tiny": torch.full((6, 17), 1e-9), "empty": torch.empty(0, 17)}.get(shift)
    x = x if x is not None else torch.randn(6, 17) * 2 + shift  # all-positive / all-negative: widened to 0
    kw = dict(dtype=QDTYPES[dtype], reduce_range=reduce_range)
    obs = MinMaxObserver(qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine, **kw)
    obs(x)
    s, z = obs.calculate_qparams()
    got_s, got_z = pyopt.choose_qparams(x, dtype=dtype, symmetric=symmetric, reduce_range=reduce_range)
    assert got_s.item() == s.item() and got_z.item() == z.item()
    obs = PerChannelMinMaxObserver(
        ch_axis=1, qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine, **kw
    )
    obs(x)
    s, z = obs.calculate_qparams()
    got_s, got_z = pyopt.choose_qparams(
        x, axis=1, dtype=dtype, symmetric=symmetric, reduce_range=reduce_range
    )
    if shift == "empty":  # the observer returns one default (1.0, 0); pyopt one per channel
        s, z = s.expand(17), z.expand(17)
    assert_bits_equal(got_s, s)
    assert torch.equal(got_z, z.to(torch.int64))


# ----------------------------------------------------------------------------------------------------------
# opcheck and bad inputs
# ----------------------------------------------------------------------------------------------------------
def op_samples():
    x = torch.randn(4, 64)
    s, z = torch.rand(4, dtype=torch.float64) + 0.01, torch.randint(-5, 5, (4,))
    q = torch.randint(-128, 127, (4, 64), dtype=torch.int8)
    gs, gz = torch.rand(4, 2) + 0.01, torch.randint(-5, 5, (4, 2))
    ops = torch.ops.pyopt
    return [
        (ops.quantize_per_tensor, (x, 0.1, 2, torch.int8), {}),
        (ops.quantize_per_channel, (x, s, z, 0, torch.int8), {}),
        (ops.quantize_per_token, (x, torch.int8), {}),
        (ops.quantize_per_group, (x, 32, torch.uint8, False), {}),
        (ops.dequantize_per_tensor.default, (q, 0.1, 2, torch.float32), {}),
        (ops.dequantize_per_channel.default, (q, s, z, 0, torch.bfloat16), {}),
        (ops.dequantize_per_group.default, (q, gs, gz, 32, torch.float16), {}),
        (ops.dequantize_per_tensor.out, (q, 0.1, 2), {"out": torch.empty(4, 64)}),
        (ops.dequantize_per_channel.out, (q, s, z, 0), {"out": torch.empty(4, 64, dtype=torch.bfloat16)}),
        (ops.dequantize_per_group.out, (q, gs, gz, 32), {"out": torch.empty(4, 64, dtype=torch.float16)}),
    ]


@pytest.mark.parametrize("op,args,kwargs", op_samples(), ids=lambda v: getattr(v, "__name__", ""))
def test_opcheck(op, args, kwargs):
    torch.library.opcheck(op, args, kwargs)


def bad_inputs():
    x = torch.randn(4, 8)
    q = torch.zeros(4, 8, dtype=torch.int8)
    s, z = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)
    P = pyopt
    return [
        (lambda: P.quantize_per_tensor(x, 0.0, 0), ValueError, "scale"),
        (lambda: P.quantize_per_tensor(x, float("inf"), 0), ValueError, "scale"),
        (lambda: P.quantize_per_tensor(x, -1.0, 0), ValueError, "scale"),
        (lambda: P.quantize_per_tensor(x, 1e-50, 0), ValueError, "scale"),
        (lambda: P.quantize_per_tensor(x, 0.1, 128), ValueError, "zero_point"),
        (lambda: P.quantize_per_tensor(x, 0.1, -1, torch.uint8), ValueError, "zero_point"),
        (lambda: P.quantize_per_tensor(x, 0.1, 0, torch.int16), TypeError, "dtype"),
        (lambda: P.quantize_per_tensor(x.int(), 0.1, 0), TypeError, "x"),
        (lambda: P.quantize_per_tensor(x.to(torch.complex64), 0.1, 0), TypeError, "x"),
        (lambda: P.quantize_per_channel(x, s, z, 2), ValueError, "axis"),
        (lambda: P.quantize_per_channel(x, s[:3], z, 0), ValueError, "scales"),
        (lambda: P.quantize_per_channel(x, s, z[:3], 0), ValueError, "zero_points"),
        (lambda: P.quantize_per_channel(x, s * 0, z, 0), ValueError, "scales"),
        (lambda: P.quantize_per_channel(x, s * float("nan"), z, 0), ValueError, "scales"),
        (lambda: P.quantize_per_channel(x, s, z + 300, 0), ValueError, "zero_points"),
        (lambda: P.quantize_per_channel(x, s, z.float(), 0), TypeError, "zero_points"),
        (lambda: P.quantize_per_channel(x, s.to("meta"), z, 0), ValueError, "scales"),
        (lambda: P.quantize_per_token(x, torch.uint8), TypeError, "dtype"),
        (lambda: P.quantize_per_group(x, 3), ValueError, "group_size"),
        (lambda: P.quantize_per_group(x, 0), ValueError, "group_size"),
        (lambda: P.dequantize_per_tensor(x, 0.1, 0), TypeError, "q"),
        (lambda: P.dequantize_per_tensor(q, -0.1, 0), ValueError, "scale"),
        (lambda: P.dequantize_per_tensor(q, 0.1, 0, torch.int32), TypeError, "out_dtype"),
        (lambda: P.dequantize_per_channel(q, s, z, -3), ValueError, "axis"),
        (lambda: P.dequantize_per_channel(q, -s, z, 0), ValueError, "scales"),
        (lambda: P.dequantize_per_group(q, s.reshape(4, 1), z.reshape(4, 1), 4), ValueError, "scales"),
        (lambda: P.dequantize_per_group(q, s.reshape(4, 1) * 0, z.reshape(4, 1), 8), ValueError, "scales"),
    ]


@pytest.mark.parametrize("device,backend", backend_params("quantize_per_tensor"))
def test_bad_inputs_raise_naming_the_argument(device, backend):
    with pyopt.use_backend(backend):
        for fn, exc, name in bad_inputs():
            with pytest.raises(exc, match=name):
                fn()


def test_cpp_checks_arguments_directly():
    """The C++ kernels (the CPU key's, reached straight from torch.ops.pyopt) check their own arguments."""
    if "cpu" not in pyopt.available_backends("cpu"):
        pytest.skip("C++ CPU kernels not built")
    x = torch.randn(4, 8)
    cpu = torch.ops.pyopt
    with pytest.raises(ValueError, match="scale"):
        cpu.quantize_per_tensor(x, -1.0, 0, torch.int8)
    with pytest.raises(ValueError, match="zero_point"):
        cpu.quantize_per_tensor(x, 1.0, 500, torch.int8)
    with pytest.raises(ValueError, match="scales"):
        cpu.quantize_per_channel(x, torch.zeros(4), torch.zeros(4, dtype=torch.long), 0, torch.int8)
    with pytest.raises(ValueError, match="axis"):
        cpu.dequantize_per_channel(
            x.to(torch.int8), torch.ones(4), torch.zeros(4, dtype=torch.long), 5, torch.float
        )
    with pytest.raises(ValueError, match="group_size"):
        cpu.quantize_per_group(x, 3, torch.int8, True)


def tie_cases(device):
    """(x, scales, zps) whose per-tensor and per-channel quantization hit .5 ties and their neighbours."""
    C = 6
    scales = torch.exp(torch.empty(C, dtype=torch.float64).uniform_(-7, 1)).float().double()
    zps = torch.randint(-20, 20, (C,))
    x = torch.stack([ties(scales[c], zps[c], 150) for c in range(C)], 0)
    return x.to(device), scales.to(device), zps.to(device)


@pytest.mark.parametrize("device,backend", backend_params("quantize_per_channel"))
@pytest.mark.parametrize("isa", isa_params())
def test_ties_match_torch_on_every_backend_and_isa(device, backend, isa):
    """Every backend and ISA on values next to ties, against torch where torch follows pyopt's rules
    (torch 2.13 CPU), else against pyopt's reference (so the GPU backends are tie-tested on any torch)."""
    if backend != "cpu" and isa != isa_params()[-1].values[0]:
        pytest.skip("ISA only matters for the C++ backend")
    x, scales, zps = tie_cases(device)
    by_torch = TORCH_TIE_RULE is None

    def want_per_tensor(c, s, z):
        if by_torch:
            return torch.quantize_per_tensor(x[c].cpu(), s, z, torch.qint8).int_repr()
        with pyopt.use_backend("reference"):
            return pyopt.quantize_per_tensor(x[c], s, z)

    if by_torch:
        qt = torch.quantize_per_channel(x.cpu(), scales.cpu(), zps.cpu(), 0, torch.qint8)
        want_q, want_deq = qt.int_repr(), qt.dequantize()
    else:
        with pyopt.use_backend("reference"):
            want_q = pyopt.quantize_per_channel(x, scales, zps, 0)
            want_deq = pyopt.dequantize_per_channel(want_q, scales, zps, 0)
    with pyopt.use_backend(backend), pyopt.use_isa(isa):
        for c in range(x.shape[0]):
            s, z = scales[c].item(), zps[c].item()
            assert_bits_equal(pyopt.quantize_per_tensor(x[c], s, z), want_per_tensor(c, s, z), x[c])
        assert_bits_equal(pyopt.quantize_per_channel(x, scales, zps, 0), want_q)
        assert_bits_equal(pyopt.dequantize_per_channel(want_q.to(device), scales, zps, 0), want_deq)


@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_gpu_matches_cpu_on_large_inputs(backend):
    """The GPU paths (grid-stride loops, per-token blocks, per-group warps) on sizes the small cases miss."""
    if backend not in pyopt.available_backends("cuda"):
        pytest.skip(f"{backend} not available for CUDA tensors")
    x = make_x((513, 4096), torch.float32, "cpu")
    s, z = qparams(513, torch.int8, "cpu")
    x_gpu, s_gpu, z_gpu = x.cuda(), s.cuda(), z.cuda()

    def ops(x, s, z):
        q = pyopt.quantize_per_channel(x, s, z, 0)
        return [
            q,
            pyopt.quantize_per_tensor(x, 0.03, 1),
            *pyopt.quantize_per_token(x),
            *pyopt.quantize_per_group(x, 128, torch.uint8, False),
            pyopt.dequantize_per_channel(q, s, z, 0),
        ]

    with pyopt.use_backend(backend):
        got = ops(x_gpu, s_gpu, z_gpu)
    assert_bits_equal(got, ops(x, s, z))


# ----------------------------------------------------------------------------------------------------------
# dequantize into the caller's tensor (out=)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", backend_params("dequantize_per_tensor.out"))
@pytest.mark.parametrize("out_dtype", FLOATS)
@pytest.mark.parametrize("qdtype", list(QDTYPES))
def test_dequantize_out_equals_allocating(device, backend, out_dtype, qdtype):
    lo, hi = pyopt._rules.QRANGE[qdtype]
    q = torch.randint(lo, hi + 1, (7, 1003), dtype=qdtype, device=device)
    s = torch.rand(7, dtype=torch.float64, device=device) + 0.01
    z = torch.randint(lo // 2, hi // 2, (7,), device=device)
    gs = (torch.rand(7, 17, device=device) + 0.01).float()
    gz = torch.randint(lo // 2, hi // 2, (7, 17), device=device)
    P = pyopt
    cases = [
        (lambda **o: P.dequantize_per_tensor(q, 0.03, int(z[0]), out_dtype, **o)),
        (lambda **o: P.dequantize_per_channel(q, s, z, 0, out_dtype, **o)),
        (lambda **o: P.dequantize_per_channel(q.t(), s, z, 1, out_dtype, **o)),  # non-contiguous q
        (lambda **o: P.dequantize_per_group(q, gs, gz, 59, out_dtype, **o)),
    ]
    with pyopt.use_backend(backend):
        for fn in cases:
            want = fn()
            out = torch.full_like(want, float("nan"))
            assert fn(out=out) is out
            assert_bits_equal(out, want)
            wide = torch.full(
                (want.shape[0], 2 * want.shape[1]), float("nan"), dtype=out_dtype, device=device
            )
            fn(out=wide[:, ::2])  # non-contiguous out: written in place, the gaps untouched
            assert_bits_equal(wide[:, ::2], want)
            assert torch.isnan(wide[:, 1::2].float()).all()
    empty = torch.empty(0, 5, dtype=torch.int8, device=device)
    assert P.dequantize_per_tensor(empty, 0.1, 0, out=torch.empty(0, 5, device=device)).shape == (0, 5)


def test_dequantize_out_bad_arguments():
    q = torch.randint(-128, 127, (4, 8), dtype=torch.int8)
    with pytest.raises(ValueError, match="out must have q's shape"):
        pyopt.dequantize_per_tensor(q, 0.1, 0, out=torch.empty(8, 4))
    with pytest.raises(TypeError, match="out_dtype"):
        pyopt.dequantize_per_tensor(q, 0.1, 0, out=torch.empty(4, 8, dtype=torch.int32))
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        pyopt.dequantize_per_tensor(q, 0.1, 0, out=[1.0])
    with pytest.raises(ValueError, match="scale"):
        pyopt.dequantize_per_tensor(q, -1.0, 0, out=torch.empty(4, 8))
    with pytest.raises((ValueError, RuntimeError), match="device"):
        pyopt.dequantize_per_tensor(q, 0.1, 0, out=torch.empty(4, 8, device="meta"))
    if "cpu" in pyopt.available_backends("cpu"):  # the C++ kernel checks on its own too
        with pytest.raises(ValueError, match="out must have q's shape"):
            torch.ops.pyopt.dequantize_per_tensor.out(q, 0.1, 0, out=torch.empty(3))


@pytest.mark.parametrize("device,backend", backend_params("dequantize_per_tensor.out"))
def test_dequantize_out_overlapping_q_is_refused(device, backend):
    """out sharing memory with q would be written while q is read: refused on every backend."""
    storage = torch.zeros(512, dtype=torch.float32, device=device)
    q = storage.view(torch.int8)[:128].view(4, 32)
    q.copy_(torch.randint(-128, 127, (4, 32), dtype=torch.int8))
    with pyopt.use_backend(backend), pytest.raises(ValueError, match="overlap"):
        pyopt.dequantize_per_tensor(q, 0.1, 0, out=storage[:128].view(4, 32))
