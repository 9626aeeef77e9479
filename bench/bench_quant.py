"""quant family benchmarks: pyopt's quantize / dequantize vs torch's quantizers (same run, same inputs).

Bytes model: a quantize reads 4 B (fp32) and writes 1 B per element; a dequantize reads 1 B and writes 4 B.
The per-channel / per-tensor scales are float32-representable (as choose_qparams gives them), so torch's
float64 scales and pyopt's computations see the same values.
"""

from __future__ import annotations

import warnings

import harness
import torch

import pyopt

TARGET_MEMCPY_PCT = 70.0


def run(quick: bool = False) -> list[harness.Row]:
    warnings.filterwarnings("ignore", message=".*quantize.*deprecated.*")  # torch's quantized tensors
    torch.manual_seed(0)
    rows_, cols = (1024, 1024) if quick else (4096, 4096)
    shape = f"{rows_}x{cols} fp32"
    x = torch.randn(rows_, cols)
    nbytes = x.numel() * 5
    scale, zp = 0.02, 3
    scales = (torch.rand(rows_) * 0.05 + 0.01).double()
    zps = torch.randint(-10, 10, (rows_,))
    repeat = 5 if quick else 10
    common = dict(nbytes=nbytes, memcpy_target_pct=TARGET_MEMCPY_PCT, repeat=repeat)
    out = []
    out.append(
        harness.compare(
            "quant",
            f"quantize_per_channel axis=0 {shape}",
            lambda: pyopt.quantize_per_channel(x, scales, zps, 0),
            "torch.quantize_per_channel(...).int_repr()",
            lambda: torch.quantize_per_channel(x, scales, zps, 0, torch.qint8).int_repr(),
            target=20.0,
            **common,
        )
    )
    out.append(
        harness.compare(
            "quant",
            f"quantize_per_tensor {shape}",
            lambda: pyopt.quantize_per_tensor(x, scale, zp),
            "torch.quantize_per_tensor(...).int_repr()",
            lambda: torch.quantize_per_tensor(x, scale, zp, torch.qint8).int_repr(),
            target=1.0,
            **common,
        )
    )
    qt = torch.quantize_per_tensor(x, scale, zp, torch.qint8)
    q = qt.int_repr()
    out.append(
        harness.compare(
            "quant",
            f"dequantize_per_tensor {rows_}x{cols} int8",
            lambda: pyopt.dequantize_per_tensor(q, scale, zp),
            "qtensor.dequantize()",
            qt.dequantize,
            target=1.0,
            **common,
        )
    )
    qc = torch.quantize_per_channel(x, scales, zps, 0, torch.qint8)
    qci = qc.int_repr()
    out.append(
        harness.compare(
            "quant",
            f"dequantize_per_channel axis=0 {rows_}x{cols} int8",
            lambda: pyopt.dequantize_per_channel(qci, scales, zps, 0),
            "qtensor.dequantize()",
            qc.dequantize,
            target=1.0,
            **common,
        )
    )
    # The same dequantizes into a reused float32 buffer (out=): the kernel's own bandwidth, without the page
    # faults of a fresh 64 MB output, which the rows above (and torch's dequantize) pay on every call. The
    # baseline is the torch spelling of the same thing: copy into the buffer, subtract, scale, in place.
    buf, buf_base = torch.empty(rows_, cols), torch.empty(rows_, cols)
    s32, zf = scales.float()[:, None], zps.float()[:, None]
    for case, fn, base in (
        ("dequantize_per_tensor", lambda: pyopt.dequantize_per_tensor(q, scale, zp, out=buf),
         lambda: buf_base.copy_(q).sub_(zp).mul_(scale)),
        ("dequantize_per_channel axis=0", lambda: pyopt.dequantize_per_channel(qci, scales, zps, 0, out=buf),
         lambda: buf_base.copy_(qci).sub_(zf).mul_(s32)),
    ):  # fmt: skip
        out.append(
            harness.compare(
                "quant", f"{case} {rows_}x{cols} int8, out=", fn, "buf.copy_(q).sub_(zp).mul_(scale)", base,
                target=1.0, **common,
            )
        )  # fmt: skip
    # No torch baseline with the same semantics for these two; they are compared with the closest torch
    # composition a user would write (amax, divide, round, clamp, cast).
    out.append(
        harness.compare(
            "quant",
            f"quantize_per_token {shape}",
            lambda: pyopt.quantize_per_token(x),
            "torch amax/div/round/clamp",
            lambda: _torch_per_token(x),
            nbytes=nbytes,
            repeat=repeat,
        )
    )
    # Per-call overhead of a tiny call: the dispatcher reaches the C++ kernel in one hop (goal: <= 1.3x torch's
    # time for its nearest op, i.e. speedup >= 0.77) through pyopt.quantize_per_tensor (the typed binding,
    # pyopt._C.ops); through torch.ops.pyopt the generic argument conversion of torch.ops adds its own cost (info).
    x64 = torch.randn(64)
    theirs = harness.calls(lambda: torch.quantize_per_tensor(x64, scale, zp, torch.qint8))
    out.append(
        harness.compare(
            "quant", f"per call: pyopt.quantize_per_tensor 64 elements ({harness.CALLS} calls)",
            harness.calls(lambda: pyopt.quantize_per_tensor(x64, scale, zp, torch.int8)),
            "torch.quantize_per_tensor", theirs, target=1 / 1.3, repeat=repeat,
        )
    )  # fmt: skip
    out.append(
        harness.compare(
            "quant", f"(info) per call: torch.ops.pyopt.quantize_per_tensor 64 elements ({harness.CALLS} calls)",
            harness.calls(lambda: torch.ops.pyopt.quantize_per_tensor(x64, scale, zp, torch.int8)),
            "torch.quantize_per_tensor", theirs, repeat=repeat,
        )
    )  # fmt: skip
    return out


def run_gpu(quick: bool = False) -> list[harness.Row]:
    """The same cases on the GPU, each GPU backend (CUDA C++, Triton) in its own row: target 85% of the
    measured device copy bandwidth, bit-exact with the reference (checked once per case)."""
    dev = "cuda"
    n = 4096 if quick else 8192
    x = torch.randn(n, n, device=dev)
    scales = (torch.rand(n, device=dev) * 0.05 + 0.01).float().double()
    zps = torch.randint(-10, 10, (n,), device=dev)
    with pyopt.use_backend("reference"):
        q = pyopt.quantize_per_tensor(x, 0.02, 3)
    common = dict(device=dev, nbytes=x.numel() * 5, memcpy_target_pct=85.0, repeat=20)
    shape = f"{n}x{n} fp32 (GPU)"
    cases = [  # (op for the backend list, case, pyopt fn, baseline name, baseline fn)
        ("quantize_per_channel", f"quantize_per_channel axis=0 {shape}",
         lambda: pyopt.quantize_per_channel(x, scales, zps, 0), "torch.quantize_per_channel(...).int_repr()",
         lambda: torch.quantize_per_channel(x, scales, zps, 0, torch.qint8).int_repr()),
        ("quantize_per_tensor", f"quantize_per_tensor {shape}", lambda: pyopt.quantize_per_tensor(x, 0.02, 3),
         "torch.quantize_per_tensor(...).int_repr()",
         lambda: torch.quantize_per_tensor(x, 0.02, 3, torch.qint8).int_repr()),
        ("dequantize_per_tensor", f"dequantize_per_tensor {n}x{n} int8 (GPU)",
         lambda: pyopt.dequantize_per_tensor(q, 0.02, 3), "(q.float() - zp) * scale", lambda: (q.float() - 3) * 0.02),
        ("dequantize_per_channel", f"dequantize_per_channel axis=0 {n}x{n} int8 (GPU)",
         lambda: pyopt.dequantize_per_channel(q, scales, zps, 0), "(q - zp[:, None]) * scale[:, None]",
         lambda: (q.float() - zps[:, None]) * scales[:, None].float()),
        ("quantize_per_token", f"quantize_per_token {shape}", lambda: pyopt.quantize_per_token(x),
         "torch amax/div/round/clamp", lambda: _torch_per_token(x)),
    ]  # fmt: skip
    rows = []
    for op, case, fn, base_name, base_fn in cases:
        with pyopt.use_backend("reference"):
            want = fn()
        for b in harness.gpu_backends(op):
            ours = harness.on_backend(b, fn)
            got = ours()
            exact = all(torch.equal(g, w) for g, w in zip(_tensors(got), _tensors(want), strict=True))
            print(
                f"[check] quant {case} [{b}]: {'bit-exact' if exact else 'MISMATCH vs reference'}", flush=True
            )
            rows.append(harness.compare("quant", f"[{b}] {case}", ours, base_name, base_fn, **common))
    return rows


def _tensors(v):
    return list(v) if isinstance(v, tuple | list) else [v]


def _torch_per_token(x):
    s = (x.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-12)
    return (x / s).round().clamp(-127, 127).to(torch.int8), s
