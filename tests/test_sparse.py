"""sparse family: masked matmul (training), CSR/BSR linear (inference), SparseLinear, dispatcher, sparsify."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params, isa_params
from tolerances import FP32_REORDERED, tol
from torch import nn

import pyopt
import pyopt.cli
from pyopt import _rules as sparse_ops
from pyopt.nn import get_param_mask
from pyopt.nn import sparse_format as dispatch
from pyopt.ops import backends

OPS = [
    "sparse_masked_linear",
    "sparse_masked_linear_grad_input",
    "sparse_masked_sddmm",
    "sparse_csr_linear",
    "sparse_csr_int8_linear",
    "sparse_bsr_linear",
]
SHAPES = [(1, 7, 5), (7, 33, 17), (70, 1003, 19), (0, 9, 4)]  # (M, K, N)


def _problem(m, k, n, density=0.3, dtype=torch.float32, block=None):
    x = torch.randn(m, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype)
    if block is None:
        mask = torch.rand(n, k) < density
    else:
        bh, bw = block
        mask = (torch.rand(n // bh, k // bw) < density).repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    return x, w, mask, torch.randn(n, dtype=dtype)


def _dense_ref(x, w, mask, b):
    """float64 oracle: x (W*mask)^T + b."""
    return F.linear(x.double(), (w.double() * mask), None if b is None else b.double())


def _close(actual, expected, dtype=torch.float32):
    torch.testing.assert_close(actual.double(), expected.double(), **tol(dtype))


# ---------------------------------------------------------------- training ops vs the float64 reference
@pytest.mark.parametrize("device,backend", backend_params("sparse_masked_linear"))
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_masked_linear_ops(device, backend, m, k, n, with_bias):
    x, w, mask, b = (t.to(device) for t in _problem(m, k, n))
    b = b if with_bias else None
    gy = torch.randn(m, n, device=device)
    with pyopt.use_backend(backend):
        y = torch.ops.pyopt.sparse_masked_linear(x, w, mask, b)
        gx = torch.ops.pyopt.sparse_masked_linear_grad_input(gy, w, mask)
        gw = torch.ops.pyopt.sparse_masked_sddmm(gy, x, mask)
    _close(y, _dense_ref(x, w, mask, b))
    _close(gx, gy.double() @ (w.double() * mask))
    _close(gw, (gy.double().t() @ x.double()) * mask)
    assert (gw[~mask] == 0).all()


@pytest.mark.parametrize("isa", isa_params())
def test_every_isa_matches_reference(isa):
    """Each C++ path (AVX-512, AVX2, baseline) on odd shapes, M on both sides of the GEMV switch."""
    if not backends.usable("cpu", "cpu"):
        pytest.skip("C++ CPU kernels not built")
    for m in (1, 3, 5, 37):
        x, w, mask, b = _problem(m, 77, 45, density=0.2)
        wb = torch.randn(48, 80)
        bmask = _problem(1, 80, 48, density=0.5, block=(8, 5))[2]
        gy = torch.randn(m, 45)
        with pyopt.use_backend("cpu"), pyopt.use_isa(isa):
            y = torch.ops.pyopt.sparse_masked_linear(x, w, mask, b)
            gx = torch.ops.pyopt.sparse_masked_linear_grad_input(gy, w, mask)
            gw = torch.ops.pyopt.sparse_masked_sddmm(gy, x, mask)
            csr = sparse_ops.to_csr(w, mask)
            y_csr16 = torch.ops.pyopt.sparse_csr_linear(x, *csr, b, 45)
            y_csr32 = torch.ops.pyopt.sparse_csr_linear(x, csr[0], csr[1].int(), csr[2], b, 45)
            xb = torch.randn(m, 80)
            y_bsr = torch.ops.pyopt.sparse_bsr_linear(xb, *sparse_ops.to_bsr(wb, bmask, (8, 5)), None, 48)
        ref = _dense_ref(x, w, mask, b)
        for out in (y, y_csr16, y_csr32):
            _close(out, ref)
        _close(gx, gy.double() @ (w.double() * mask))
        _close(gw, (gy.double().t() @ x.double()) * mask)
        _close(y_bsr, _dense_ref(xb, wb, bmask, None))


@pytest.mark.parametrize("isa", isa_params())
def test_every_isa_k_blocked_forward(isa):
    """K large enough that the forward splits K into blocks (panels > 512 KiB: K > 1024 at a 128-wide
    AVX-512 tile, > 2048 at AVX2's 64), so later blocks accumulate into the tile (init=false)."""
    if not backends.usable("cpu", "cpu"):
        pytest.skip("C++ CPU kernels not built")
    m, k, n = 130, 4200, 33
    x, w, mask, b = _problem(m, k, n, density=0.1)
    wb = torch.randn(32, k)
    bmask = _problem(1, k, 32, density=0.3, block=(16, 8))[2]
    with pyopt.use_backend("cpu"), pyopt.use_isa(isa):
        y = torch.ops.pyopt.sparse_masked_linear(x, w, mask, b)
        y_csr = torch.ops.pyopt.sparse_csr_linear(x, *sparse_ops.to_csr(w, mask), b, n)
        y_bsr = torch.ops.pyopt.sparse_bsr_linear(x, *sparse_ops.to_bsr(wb, bmask, (16, 8)), None, 32)

    # 420 float32 products per output here: bound the error by the summation's own scale, 8 float32 eps of
    # sum_k |x_k w_k| (the classic recursive-summation bound is (K-1) eps of it; a lost or doubled term is
    # ~|x_k w_k|, far above this).
    def close(out, w_, m_, b_):
        ref = _dense_ref(x, w_, m_, b_)
        bound = 8 * torch.finfo(torch.float32).eps * (x.double().abs() @ (w_.double().abs() * m_).t()) + 1e-6
        assert ((out.double() - ref).abs() <= bound).all()

    close(y, w, mask, b)
    close(y_csr, w, mask, b)
    close(y_bsr, wb, bmask, None)


@pytest.mark.parametrize("device,backend", backend_params("sparse_masked_linear"))
def test_gradcheck_float64(device, backend):
    x, w, mask, b = (t.to(device) for t in _problem(3, 11, 6, dtype=torch.float64))
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    with pyopt.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda x, w, b: torch.ops.pyopt.sparse_masked_linear(x, w, mask, b), (x, w, b)
        )


@pytest.mark.parametrize("device,backend", backend_params("sparse_masked_linear"))
def test_backward_float32_vs_float64_dense(device, backend):
    """Autograd through the (C++) float32 kernels vs autograd of the dense masked layer in float64;
    3-D, non-contiguous input."""
    x, w, mask, b = _problem(2 * 9, 40, 23)
    x = x.reshape(9, 2, 40).transpose(0, 1)  # [2, 9, 40], not contiguous
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, w, b))
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    gy = torch.randn(2, 9, 23)
    with pyopt.use_backend(backend):
        torch.ops.pyopt.sparse_masked_linear(xs, ws, mask, bs).backward(gy)
    F.linear(xd, wd * mask, bd).backward(gy.double())
    for a, e in ((xs.grad, xd.grad), (ws.grad, wd.grad), (bs.grad, bd.grad)):
        _close(a, e)
    assert (ws.grad[~mask] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes(dtype):
    x, w, mask, b = _problem(5, 64, 16, dtype=dtype)
    y = torch.ops.pyopt.sparse_masked_linear(x, w, mask, b)
    assert y.dtype == dtype
    _close(y, _dense_ref(x, w, mask, b), dtype)
    y_csr = torch.ops.pyopt.sparse_csr_linear(x, *sparse_ops.to_csr(w, mask), b, 16)
    _close(y_csr, _dense_ref(x, w, mask, b), dtype)


# ---------------------------------------------------------------- inference formats
@pytest.mark.parametrize("device,backend", backend_params("sparse_csr_linear"))
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_csr_linear(device, backend, m, k, n):
    x, w, mask, b = (t.to(device) for t in _problem(m, k, n, density=0.1))
    crow, col, values = sparse_ops.to_csr(w, mask)
    with pyopt.use_backend(backend):
        y = torch.ops.pyopt.sparse_csr_linear(x.reshape(1, m, k), crow, col, values, b, n)
    _close(y.reshape(m, n), _dense_ref(x, w, mask, b))


@pytest.mark.parametrize("device,backend", backend_params("sparse_csr_linear"))
@pytest.mark.parametrize("m", [1, 9])  # the GEMV (M <= 4) and the tiled path
def test_csr_linear_no_input_features(device, backend, m):
    w = torch.empty(6, 0, device=device)
    crow, col, values = sparse_ops.to_csr(w, torch.ones_like(w, dtype=torch.bool))
    b = torch.randn(6, device=device)
    with pyopt.use_backend(backend):
        y = torch.ops.pyopt.sparse_csr_linear(torch.empty(m, 0, device=device), crow, col, values, b, 6)
    assert torch.equal(y, b.expand(m, 6))


@pytest.mark.parametrize("device,backend", backend_params("sparse_bsr_linear"))
def test_bsr_linear(device, backend):
    block = (64, 64) if backend == "triton" else (16, 8)  # the Triton kernel wants blocks >= 16; tests use 64
    x, w, mask, b = (t.to(device) for t in _problem(5, 192, 128, density=0.5, block=block))
    crow, col, values = sparse_ops.to_bsr(w, mask, block)
    with pyopt.use_backend(backend):
        y = torch.ops.pyopt.sparse_bsr_linear(x, crow, col, values, b, 128)
        y0 = torch.ops.pyopt.sparse_bsr_linear(x[:0], crow, col, values, b, 128)
    _close(y, _dense_ref(x, w, mask, b))
    assert y0.shape == (0, 128)


@pytest.mark.parametrize("device,backend", backend_params("sparse_masked_linear"))
def test_opcheck_every_op(device, backend):
    x, w, mask, b = (t.to(device) for t in _problem(6, 32, 16, density=0.3, block=(8, 8)))
    gy = torch.randn(6, 16, device=device)
    csr = sparse_ops.to_csr(w, mask)
    bsr = sparse_ops.to_bsr(w, mask, (8, 8))
    cases = {
        "sparse_masked_linear": (x.requires_grad_(), w, mask, b),
        "sparse_masked_linear_grad_input": (gy, w, mask),
        "sparse_masked_sddmm": (gy, x.detach(), mask),
        "sparse_csr_linear": (x.detach(), *csr, b, 16),
        "sparse_csr_int8_linear": (x.detach(), *sparse_ops.to_csr_int8(w, mask), b, 16),
        "sparse_bsr_linear": (x.detach(), *bsr, b, 16),
    }
    assert set(cases) == set(OPS)
    with pyopt.use_backend(backend):
        for name, args in cases.items():
            torch.library.opcheck(getattr(torch.ops.pyopt, name).default, args)


def test_bad_inputs():
    x, w, mask, b = _problem(4, 16, 8)
    with pytest.raises(ValueError, match="mask"):
        torch.ops.pyopt.sparse_masked_linear(x, w, mask[:, :8], b)
    with pytest.raises(TypeError, match="mask"):
        torch.ops.pyopt.sparse_masked_linear(x, w, mask.float(), b)
    with pytest.raises(TypeError, match="weight"):
        torch.ops.pyopt.sparse_masked_linear(x, w.double(), mask, b)
    with pytest.raises(ValueError, match="x"):
        torch.ops.pyopt.sparse_masked_linear(x[:, :5], w, mask, b)
    with pytest.raises(ValueError, match="bias"):
        torch.ops.pyopt.sparse_masked_linear(x, w, mask, b[:3])
    crow, col, values = sparse_ops.to_csr(w, mask)
    bad_col = col.clone()
    bad_col[0] = 16
    for backend in [b for b in ("cpu", "reference") if backends.usable(b, "cpu")]:
        with pyopt.use_backend(backend), pytest.raises((RuntimeError, ValueError), match="col_indices"):
            torch.ops.pyopt.sparse_csr_linear(x, crow, bad_col, values, b, 8)
    with pytest.raises(ValueError, match="crow_indices"):
        torch.ops.pyopt.sparse_csr_linear(x, crow[:-1], col, values, b, 8)
    with pytest.raises(ValueError, match="block"):
        torch.ops.pyopt.sparse_bsr_linear(x, crow, col.int(), values.reshape(-1, 1, 1).expand(-1, 3, 1), b, 8)
    with pytest.raises(ValueError, match="mask"):
        pyopt.nn.SparseLinear.from_dense(nn.Linear(16, 8), mask.t())
    with pytest.raises(ValueError, match="block"):
        sparse_ops.to_bsr(w, mask, (3, 3))


# ---------------------------------------------------------------- SparseLinear, compress, dispatcher
def _layer(k=48, n=32, density=0.2, block=None):
    lin = nn.Linear(k, n)
    mask = _problem(1, k, n, density=density, block=block)[2]
    return lin, mask, pyopt.nn.SparseLinear.from_dense(lin, mask)


def test_sparse_linear_training_keeps_pruned_zero():
    lin, mask, layer = _layer()
    assert (layer.weight[~mask] == 0).all() and get_param_mask(layer.weight) is layer.mask
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(2, 3, 48)).square().mean().backward()
        opt.step()
    assert (layer.weight[~mask] == 0).all()  # SDDMM grads are 0 there, so plain SGD keeps them 0
    layer.to(torch.float64)
    assert get_param_mask(layer.weight) is layer.mask  # re-attached after .to()


@pytest.mark.parametrize("fmt", ["masked", "dense", "csr", "bsr"])
def test_formats_match_and_round_trip(fmt):
    lin, mask, layer = _layer(density=0.4, block=(8, 16))
    x = torch.randn(5, 48)
    expected = _dense_ref(x, lin.weight.detach(), mask, lin.bias.detach())
    if fmt != "masked":
        layer.compress(format=fmt)
        assert layer.format == fmt and fmt in repr(layer)
    if fmt == "bsr":  # the mask's own block shape (or a larger one it happens to have)
        assert layer.block[0] % 8 == 0 and layer.block[1] % 16 == 0
        assert sparse_ops.is_block_structured(mask, layer.block)
    with torch.no_grad():
        y = layer(x)
    _close(y, expected)
    assert layer.memory_bytes()[0] == 48 * 32 * 4  # the dense float32 weight it replaces
    # what pyopt.save/load does: config -> empty module -> state_dict; bit-exact
    clone = pyopt.nn.SparseLinear.from_config(layer.extra_config())
    clone.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(clone(x), y)
    if fmt == "masked":
        assert get_param_mask(clone.weight) is clone.mask


def test_compress_errors():
    _, _, layer = _layer()
    with pytest.raises(ValueError, match="format"):
        layer.compress(format="coo")
    with pytest.raises(ValueError, match="block"):
        layer.compress(format="bsr")  # unstructured mask, no block given
    with pytest.raises(ValueError, match="2:4"):
        layer.compress(format="2:4")  # CPU
    layer.compress(format="csr")
    with pytest.raises(RuntimeError, match="already compressed"):
        layer.compress()
    with pytest.raises(ValueError, match="compressed"):  # prune needs the dense weight
        pyopt.prune(nn.Sequential(layer), 0.5)
    with pytest.raises(ValueError, match="in_features must be >= 0"):
        pyopt.nn.SparseLinear(-3, 4)


@pytest.mark.parametrize("fmt", ["masked", "dense", "csr", "bsr", "csr_int8"])
def test_wrong_input_width_raises(fmt):
    """The compressed kernels read only the columns their indices name: a wider x must not pass silently."""
    mask = torch.rand(16, 32).repeat_interleave(2, 0).repeat_interleave(2, 1) > 0.6  # 2 x 2 blocks
    layer = pyopt.nn.SparseLinear.from_dense(nn.Linear(64, 32), mask)
    if fmt == "csr_int8":
        layer.compress(format="csr").quantize_int8()
    elif fmt != "masked":
        layer.compress(format=fmt, block=(2, 2) if fmt == "bsr" else None)
    for width in (63, 72):
        with pytest.raises(ValueError, match="in_features=64"):
            layer(torch.randn(3, width))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([1.0] * 64)


@pytest.mark.parametrize("density", [0.5, 0.1, 0.01])
def test_dispatcher_never_picks_slower_than_dense(density):
    """In its own calibration, the chosen format is at least as fast as dense at every calibrated M."""
    w = torch.randn(256, 256)
    mask = torch.rand(256, 256) < density
    cache = dispatch.DispatchCache()
    d = dispatch.choose(w, mask, None, cache, ms=(1, 32), rounds=3)
    assert d.format in ("dense", "csr") and d.format in d.reason
    for m in (1, 32):
        assert d.times_ms[d.format][m] <= d.times_ms["dense"][m]
    if d.format == "dense":  # no sparse format beat dense by the dispatcher's margin at every M
        margin = dispatch.SPARSE_MARGIN
        assert all(min(d.ratio(f, m) for m in (1, 32)) <= margin for f in d.times_ms if f != "dense")
    assert dispatch.choose(w, mask, None, cache, ms=(1, 32)) is d and len(cache) == 1  # cached


def test_dispatcher_offers_bsr_for_block_masks():
    w = torch.randn(64, 64)
    mask = _problem(1, 64, 64, density=0.3, block=(16, 16))[2]
    assert dispatch.detect_block(mask) == (16, 16)
    d = dispatch.choose(w, mask, None, dispatch.DispatchCache(), ms=(8,), rounds=1)
    assert "bsr" in d.times_ms


def test_sparsify_report():
    model = nn.Sequential(_layer(density=0.05)[2], nn.ReLU(), _layer(k=32, n=16, density=0.05)[2])
    x = torch.randn(3, 48)
    with torch.no_grad():
        before = model(x)
    model, report = pyopt.sparsify(model, format="csr")
    assert [r["format"] for r in report] == ["csr", "csr"]
    assert report.summary["memory_saving"] > 0.5 and "csr" in str(report)
    with torch.no_grad():
        _close(model(x), before)
    model, report = pyopt.sparsify(model)  # already compressed: reported, unchanged
    assert [r["format"] for r in report] == ["csr", "csr"]


def test_info_lists_sparse_format_choices(capsys):
    pyopt.cli.cmd_info(None)
    assert "sparse format choice" in capsys.readouterr().out


# ---------------------------------------------------------------- csr_int8 (weight-only int8 CSR)
def _int8_problem(m, k, n, density=0.2, dtype=torch.float32):
    x, w, mask, b = _problem(m, k, n, density=density)
    crow, col, q, scales = sparse_ops.to_csr_int8(w, mask)
    return x.to(dtype), (crow, col, q, scales), b


def _dequantized_ref(x, crow, col, q, scales, b, n):
    """float64 oracle: x W_deq^T + b, W_deq[n, k] = q * scale_n (dense, from the CSR structure)."""
    w = torch.zeros(n, x.shape[-1], dtype=torch.float64)
    rows = torch.repeat_interleave(torch.arange(n), crow[1:] - crow[:-1])
    w[rows, col.long()] = q.double() * scales.double()[rows]
    return F.linear(x.double(), w, None if b is None else b.double())


def test_csr_int8_quantisation_rule():
    """The values are Int8Linear's per-channel quantiser applied to weight*mask, gathered at kept entries."""
    from pyopt.nn.int8_linear import quantize_weight_per_channel

    _, w, mask, _ = _problem(1, 50, 9, density=0.3)
    mask[3] = False  # an all-pruned row: scale 1.0
    crow, col, q, scales = sparse_ops.to_csr_int8(w, mask)
    q_ref, s_ref = quantize_weight_per_channel(torch.where(mask, w, 0.0))
    assert q.dtype == torch.int8 and scales.dtype == torch.float32 and scales.shape == (9,)
    assert torch.equal(scales, s_ref) and scales[3] == 1.0
    rows, cols = mask.nonzero(as_tuple=True)
    assert torch.equal(q, q_ref[rows, cols]) and torch.equal(col.long(), cols)
    assert q.abs().max() == 127


@pytest.mark.parametrize("m,k,n", [(1, 7, 17), (3, 1003, 1), (5, 1, 17), (70, 1003, 17), (0, 9, 4)])
def test_csr_int8_reference_vs_float64(m, k, n):
    x, (crow, col, q, s), b = _int8_problem(m, k, n)
    with pyopt.use_backend("reference"):
        y = torch.ops.pyopt.sparse_csr_int8_linear(x, crow, col, q, s, b, n)
    _close(y, _dequantized_ref(x, crow, col, q, s, b, n))


@pytest.mark.parametrize("isa", isa_params())
def test_csr_int8_every_isa_matches_reference(isa):
    """C++ vs the reference on every ISA: M on both sides of the GEMV switch, odd K / N, int16 and int32
    column indices, bias or not; only float summation order differs."""
    if not backends.usable("cpu", "cpu"):
        pytest.skip("C++ CPU kernels not built")
    for m in (1, 3, 5, 70):
        for k in (1, 7, 1003):
            for n in (1, 17):
                x, (crow, col, q, s), b = _int8_problem(m, k, n)
                for cols, bias in ((col, b), (col.int(), None)):
                    args = (x, crow, cols, q, s, bias, n)
                    with pyopt.use_backend("reference"):
                        ref = torch.ops.pyopt.sparse_csr_int8_linear(*args)
                    with pyopt.use_backend("cpu"), pyopt.use_isa(isa):
                        y = torch.ops.pyopt.sparse_csr_int8_linear(*args)
                    assert y.shape == (m, n) and y.dtype == torch.float32
                    _close(y, ref)
                    _close(y, _dequantized_ref(x, crow, cols, q, s, bias, n))
    # K-blocked forward (panel > 1 MiB): the row scale is applied after the last K-block
    x, (crow, col, q, s), b = _int8_problem(130, 4200, 9)
    with pyopt.use_backend("reference"):
        ref = torch.ops.pyopt.sparse_csr_int8_linear(x, crow, col, q, s, b, 9)
    with pyopt.use_backend("cpu"), pyopt.use_isa(isa):
        y = torch.ops.pyopt.sparse_csr_int8_linear(x, crow, col, q, s, b, 9)
    torch.testing.assert_close(y, ref, **FP32_REORDERED)  # 420 float32 terms per output, two orders


@pytest.mark.parametrize("device,backend", backend_params("sparse_csr_int8_linear"))
def test_csr_int8_shapes_and_dtypes(device, backend):
    """3-D and non-contiguous x, empty M, no input features, fp16 / bf16 x (output in x's dtype)."""
    x, (crow, col, q, s), b = _int8_problem(2 * 9, 40, 23)
    t = [v.to(device) for v in (crow, col, q, s)]
    xs = x.to(device).reshape(9, 2, 40).transpose(0, 1)  # [2, 9, 40], not contiguous
    with pyopt.use_backend(backend):
        y = torch.ops.pyopt.sparse_csr_int8_linear(xs, *t, b.to(device), 23)
        y0 = torch.ops.pyopt.sparse_csr_int8_linear(xs[:, :0], *t, b.to(device), 23)
        halves = {
            dt: torch.ops.pyopt.sparse_csr_int8_linear(xs.to(dt), *t, b.to(device), 23)
            for dt in (torch.float16, torch.bfloat16)
        }
    expected = _dequantized_ref(xs.cpu(), crow, col, q, s, b, 23)
    assert y.shape == (2, 9, 23)
    _close(y.cpu(), expected)
    assert y0.shape == (2, 0, 23)
    for dt, yh in halves.items():
        assert yh.dtype == dt
        _close(yh.cpu(), _dequantized_ref(xs.cpu().to(dt), crow, col, q, s, b, 23), dt)
    w = torch.empty(6, 0)  # K == 0: the output is the bias
    crow0, col0, q0, s0 = sparse_ops.to_csr_int8(w, torch.ones_like(w, dtype=torch.bool))
    with pyopt.use_backend(backend):
        for m in (1, 9):
            y = torch.ops.pyopt.sparse_csr_int8_linear(torch.empty(m, 0), crow0, col0, q0, s0, b[:6], 6)
            assert torch.equal(y, b[:6].expand(m, 6))


@pytest.mark.parametrize("device,backend", backend_params("sparse_csr_int8_linear"))
def test_csr_int8_opcheck(device, backend):
    x, (crow, col, q, s), b = _int8_problem(6, 32, 16, density=0.3)
    for xx, bb in ((x, b), (x[:1], None)):
        args = tuple(t.to(device) if t is not None else None for t in (xx, crow, col, q, s, bb)) + (16,)
        with pyopt.use_backend(backend):
            torch.library.opcheck(torch.ops.pyopt.sparse_csr_int8_linear.default, args)


def test_csr_int8_bad_inputs():
    x, (crow, col, q, s), b = _int8_problem(4, 16, 8)
    op = torch.ops.pyopt.sparse_csr_int8_linear
    with pytest.raises(TypeError, match="values"):
        op(x, crow, col, q.float(), s, b, 8)
    with pytest.raises(ValueError, match="row_scales"):
        op(x, crow, col, q, s[:7], b, 8)
    with pytest.raises(TypeError, match="row_scales"):
        op(x, crow, col, q, s.double(), b, 8)
    with pytest.raises(ValueError, match="x must have at least 1 dim"):
        op(torch.tensor(1.0), crow, col, q, s, b, 8)
    with pytest.raises(TypeError, match="x"):
        op(x.int(), crow, col, q, s, b, 8)
    with pytest.raises(ValueError, match="bias"):
        op(x, crow, col, q, s, b[:3], 8)
    with pytest.raises(ValueError, match="crow_indices"):
        op(x, crow[:-1], col, q, s, b, 8)
    bad_col = col.clone()
    bad_col[0] = 16
    for backend in [b for b in ("cpu", "reference") if backends.usable(b, "cpu")]:
        for m in (1, 9):  # the GEMV and the tiled path both check
            with pyopt.use_backend(backend), pytest.raises((RuntimeError, ValueError), match="col_indices"):
                op(torch.randn(m, 16), crow, bad_col, q, s, b, 8)
    if backends.usable("cpu", "cpu"):  # the C++ kernel's own checks, named
        with pyopt.use_backend("cpu"), pytest.raises(TypeError, match="values must have dtype"):
            op(x, crow, col, q.float(), s, b, 8)
        with pyopt.use_backend("cpu"), pytest.raises(ValueError, match="row_scales must have"):
            op(x, crow, col, q, s[:7], b, 8)


@pytest.mark.parametrize("start", ["masked", "csr", "dense"])
def test_sparse_linear_quantize_int8_round_trip(start):
    lin, mask, layer = _layer(density=0.3)
    x = torch.randn(5, 48)
    if start != "masked":
        layer.compress(format=start)
    layer.quantize_int8()
    assert layer.format == "csr_int8" and "csr_int8" in repr(layer)
    assert layer.values.dtype == torch.int8 and layer.row_scales.shape == (32,)
    assert not hasattr(layer, "weight") and not hasattr(layer, "mask")
    crow, col, q, s = sparse_ops.to_csr_int8(lin.weight.detach(), mask)
    assert torch.equal(layer.values, q) and torch.equal(layer.row_scales, s)
    with torch.no_grad():
        y = layer(x)
    _close(y, _dequantized_ref(x, crow, col, q, s, lin.bias.detach(), 32))
    dense, own = layer.memory_bytes()
    assert dense == 48 * 32 * 4 and own == crow.numel() * 8 + col.numel() * 2 + q.numel() + 32 * 4
    clone = pyopt.nn.SparseLinear.from_config(layer.extra_config())  # what pyopt.load does
    clone.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(clone(x), y)
    assert layer.quantize_int8() is layer  # already csr_int8: a no-op
    half = pyopt.nn.SparseLinear.from_dense(nn.Linear(48, 32).to(torch.bfloat16), mask).quantize_int8()
    assert half.memory_bytes()[0] == 48 * 32 * 2  # the bf16 layer it replaces (its dtype kept in the bias)
    _, bmask, blayer = _layer(density=0.4, block=(8, 16))
    blayer.compress(format="bsr")
    with pytest.raises(ValueError, match="bsr"):
        blayer.quantize_int8()


def test_sparse_linear_csr_int8_compile_fullgraph_identical():
    _, _, layer = _layer(density=0.2)
    layer.compress(format="csr").quantize_int8()
    x = torch.randn(3, 5, 48)
    with torch.no_grad():
        assert torch.equal(torch.compile(layer, fullgraph=True)(x), layer(x))


def test_half_keeps_quantisation_metadata_float32():
    """.half() / .to(bfloat16) convert a model's float tensors; the int8 layers' scales (and their float32
    bias) must stay float32, or the ops reject them."""
    from pyopt.nn import BinaryLinear, Int8Linear

    lin = nn.Linear(64, 32)
    mask = torch.rand(32, 64) > 0.7
    sparse = pyopt.nn.SparseLinear.from_dense(lin, mask)
    sparse.compress(format="csr")
    sparse.quantize_int8()
    for layer in (Int8Linear.from_float(lin), BinaryLinear.from_float(lin), sparse):
        for dtype in (torch.float16, torch.bfloat16):
            converted = copy.deepcopy(layer).to(dtype)
            for name in ("weight_scales", "alpha", "row_scales"):
                if hasattr(converted, name):
                    assert getattr(converted, name).dtype == torch.float32
            with torch.no_grad():
                y = converted(torch.randn(3, 64, dtype=dtype))
            assert y.dtype == dtype and torch.isfinite(y.float()).all()


# ---------------------------------------------------------------- structural zeros and index validation
@pytest.mark.parametrize("device,backend", backend_params("sparse_csr_linear"))
@pytest.mark.parametrize("m", [1, 9])
def test_pruned_columns_are_structural_zeros(device, backend, m):
    """An inf / NaN in a column of x that no kept weight reads does not reach y, on every backend and format (the
    sparse semantics; a dense matmul with zeros would give NaN); through a kept weight it does."""
    w = torch.randn(6, 8, device=device)
    mask = torch.ones(6, 8, dtype=torch.bool, device=device)
    mask[:, 3] = False  # column 3: no kept weight
    x = torch.randn(m, 8, device=device)
    x[:, 3] = float("nan")
    want = x[:, [0, 1, 2, 4, 5, 6, 7]] @ w[:, [0, 1, 2, 4, 5, 6, 7]].t()
    crow, col, values = sparse_ops.to_csr(w, mask)
    with pyopt.use_backend(backend):
        for y in (
            torch.ops.pyopt.sparse_csr_linear(x, crow, col, values, None, 6),
            torch.ops.pyopt.sparse_masked_linear(x, w, mask, None),
            torch.ops.pyopt.sparse_masked_linear(x.double(), w.double(), mask, None).float(),
        ):
            assert not torch.isnan(y).any()
            torch.testing.assert_close(y, want, **FP32_REORDERED)
        x[0, 0] = float("inf")  # a kept column: propagates
        y = torch.ops.pyopt.sparse_csr_linear(x, crow, col, values, None, 6)
        assert not torch.isfinite(y[0]).any()


@pytest.mark.parametrize("device,backend", backend_params("sparse_csr_linear"))
def test_unsorted_or_duplicate_columns_are_refused(device, backend):
    x = torch.randn(3, 8, device=device)
    crow = torch.tensor([0, 2, 3], device=device)
    values = torch.ones(3, device=device)
    for col in ([3, 1, 5], [2, 2, 5]):
        with pyopt.use_backend(backend), pytest.raises(ValueError, match="strictly increasing"):
            torch.ops.pyopt.sparse_csr_linear(
                x, crow, torch.tensor(col, dtype=torch.int16, device=device), values, None, 2
            )
    bcrow = torch.tensor([0, 2], device=device, dtype=torch.int64)
    bvalues = torch.ones(2, 2, 2, device=device)
    with pyopt.use_backend(backend), pytest.raises(ValueError, match="strictly increasing"):
        torch.ops.pyopt.sparse_bsr_linear(
            x, bcrow, torch.tensor([1, 0], dtype=torch.int32, device=device), bvalues, None, 2
        )
