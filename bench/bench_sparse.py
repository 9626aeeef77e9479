"""sparse family benchmarks: pyopt's CSR/BSR/masked kernels vs dense F.linear and torch's CSR matmul.

Goals (K = N = 4096, float32, ratios in one run): 90% unstructured >= 4x dense at M=64 and 256,
>= 3x at M=1, >= 2x torch CSR at each M; 70% >= 1.5x dense; 50% >= 0.95x dense (the dispatcher picks);
90% block-sparse 16x16 >= 6x dense at M=256; training step of SparseLinear at 90%, M=256 >= 2x a dense
masked layer (F.linear(x, W*M) + autograd).
"""

from __future__ import annotations

import functools
import warnings

import harness
import torch
import torch.nn.functional as F
from torch import nn

import pyopt
from pyopt import _rules as sparse_ops


def _masked_weight(n, k, sparsity, block=None):
    w = torch.randn(n, k)
    if block is None:
        mask = torch.rand(n, k) >= sparsity
    else:
        bh, bw = block
        mask = (torch.rand(n // bh, k // bw) >= sparsity).repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    return w, mask


def run(quick: bool = False) -> list[harness.Row]:
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    # more samples than the harness default: these medians are read as ratios against 3-6x targets
    compare = functools.partial(harness.compare, repeat=10 if quick else 20, min_time=0.2 if quick else 0.5)
    torch.manual_seed(0)
    n = k = 1024 if quick else 4096
    ms = (1, 64) if quick else (1, 64, 256)
    big_m = ms[-1]
    shape = f"K=N={k}"
    rows = []
    csr_op, bsr_op = torch.ops.pyopt.sparse_csr_linear, torch.ops.pyopt.sparse_bsr_linear

    # 90% unstructured: pyopt CSR vs dense F.linear and vs torch's CSR matmul (weight @ x^T)
    w, mask = _masked_weight(n, k, 0.9)
    wm = w * mask
    csr = sparse_ops.to_csr(w, mask)
    torch_csr = wm.to_sparse_csr()
    for m in ms:
        x = torch.randn(m, k)
        xt = x.t().contiguous()
        target = 3.0 if m == 1 else 4.0
        rows.append(compare("sparse", f"90% CSR linear M={m} {shape}", lambda x=x: csr_op(x, *csr, None, n),
                                    "F.linear dense", lambda x=x: F.linear(x, wm), target=target))  # fmt: skip
        rows.append(compare("sparse", f"90% CSR linear M={m} {shape}", lambda x=x: csr_op(x, *csr, None, n),
                                    "torch CSR W@x^T", lambda xt=xt: torch_csr @ xt, target=2.0))  # fmt: skip

    # 90% csr_int8 (weight-only int8 CSR, 3 B per kept weight): vs dense (no target: it is chosen for size)
    # and vs the float CSR op it replaces (information: the int8 -> float conversion per nonzero)
    q8 = sparse_ops.to_csr_int8(w, mask)
    q8_op = torch.ops.pyopt.sparse_csr_int8_linear
    for m in ms:
        x = torch.randn(m, k)
        rows.append(compare("sparse", f"90% CSR int8 linear M={m} {shape}", lambda x=x: q8_op(x, *q8, None, n),
                                    "F.linear dense", lambda x=x: F.linear(x, wm)))  # fmt: skip
        rows.append(compare("sparse", f"(info) 90% CSR int8 linear M={m} {shape}",
                            lambda x=x: q8_op(x, *q8, None, n),
                            "float CSR linear", lambda x=x: csr_op(x, *csr, None, n)))  # fmt: skip

    # 70% unstructured vs dense
    w7, mask7 = _masked_weight(n, k, 0.7)
    wm7, csr7 = w7 * mask7, sparse_ops.to_csr(w7, mask7)
    for m in ms:
        x = torch.randn(m, k)
        rows.append(compare("sparse", f"70% CSR linear M={m} {shape}", lambda x=x: csr_op(x, *csr7, None, n),
                                    "F.linear dense", lambda x=x: F.linear(x, wm7), target=1.5))  # fmt: skip

    # 50%: the dispatcher decides; the layer must not be slower than dense
    w5, mask5 = _masked_weight(n, k, 0.5)
    layer = pyopt.nn.SparseLinear.from_dense(nn.Linear(k, n, bias=False), mask5)
    with torch.no_grad():
        layer.weight.copy_(w5 * mask5)
    wm5 = layer.weight.detach().clone()
    layer.compress()
    for m in ms:
        x = torch.randn(m, k)
        with torch.no_grad():
            rows.append(compare("sparse", f"50% SparseLinear.compress() [{layer.format}] M={m} {shape}",
                                        lambda x=x: layer(x), "F.linear dense", lambda x=x: F.linear(x, wm5),
                                        target=0.95))  # fmt: skip

    # 90% block-sparse 16x16
    wb, maskb = _masked_weight(n, k, 0.9, block=(16, 16))
    wbm, bsr = wb * maskb, sparse_ops.to_bsr(wb, maskb, (16, 16))
    for m in ms[1:]:
        x = torch.randn(m, k)
        rows.append(compare("sparse", f"90% BSR 16x16 linear M={m} {shape}", lambda x=x: bsr_op(x, *bsr, None, n),
                                    "F.linear dense", lambda x=x: F.linear(x, wbm),
                                    target=6.0 if m == 256 else None))  # fmt: skip

    # training step (forward + backward) at 90%
    lin = nn.Linear(k, n)
    sl = pyopt.nn.SparseLinear.from_dense(lin, mask)
    wd = lin.weight.detach().clone().requires_grad_()
    bd = lin.bias.detach().clone().requires_grad_()
    x = torch.randn(big_m, k, requires_grad=True)

    def sparse_step():
        sl.zero_grad(set_to_none=True)
        sl(x).sum().backward()

    def dense_step():
        wd.grad = bd.grad = None
        F.linear(x, wd * mask, bd).sum().backward()

    rows.append(compare("sparse", f"90% SparseLinear train step M={big_m} {shape}", sparse_step,
                                "F.linear(x, W*M) + autograd", dense_step, target=2.0))  # fmt: skip
    if not quick:
        print(f"[bench] sparse dispatcher at 50%: {layer.reason}")
    return rows


def _2_4_mask(n, k, device):
    """Keep the 2 largest |w| of every 4 along K (what pyopt.prune(pattern="2:4") keeps)."""
    w = torch.randn(n, k, device=device)
    idx = w.abs().reshape(n, k // 4, 4).topk(2, dim=-1).indices
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool, device=device).scatter_(-1, idx, True)
    return w, mask.reshape(n, k)


def run_gpu(quick: bool = False) -> list[harness.Row]:
    """GPU goals: BSR 90% with 32x32 blocks >= 3x dense bf16 at M >= 1024 (Triton kernel);
    2:4 (torch semi-structured, chosen by SparseLinear.compress) >= 1.1x dense bf16 at M >= 2048.
    CSR 90% float32 (CUDA C++ kernel) vs dense and vs torch's CSR (cuSPARSE) is reported for information."""
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    dev, dt = "cuda", torch.bfloat16
    compare = functools.partial(harness.compare, device=dev, repeat=10, min_time=0.05 if quick else 0.2)
    torch.manual_seed(0)
    n = k = 4096
    rows = []
    wb, maskb = _masked_weight(n, k, 0.9, block=(32, 32))
    wb, maskb = wb.to(dev, dt), maskb.to(dev)
    wbm, bsr = wb * maskb, sparse_ops.to_bsr(wb, maskb, (32, 32))
    for m in (1024,) if quick else (1024, 4096):
        x = torch.randn(m, k, device=dev, dtype=dt)
        for b in harness.gpu_backends("sparse_bsr_linear"):
            fn = harness.on_backend(b, lambda x=x: torch.ops.pyopt.sparse_bsr_linear(x, *bsr, None, n))
            harness.check_close("sparse", f"BSR [{b}] M={m}", fn(), x.float() @ wbm.float().t(), 0.02, 0.1)
            rows.append(compare("sparse", f"90% BSR 32x32 [{b}] M={m} K=N={k} bf16 (GPU)", fn,
                                "F.linear dense bf16", lambda x=x: F.linear(x, wbm), target=3.0))  # fmt: skip
    w4, mask4 = _2_4_mask(n, k, dev)
    layer = pyopt.nn.SparseLinear.from_dense(nn.Linear(k, n, bias=False).to(dev, dt), mask4)
    with torch.no_grad():
        layer.weight.copy_(w4 * mask4)
    w4m = layer.weight.detach().clone()
    try:
        layer.compress(format="2:4")
    except Exception as e:  # noqa: BLE001  (no cuSPARSELt / unsupported card: say so, keep benching)
        print(f"[bench] sparse 2:4 unavailable on this GPU: {e}")
        layer = None
    for m in () if layer is None else ((2048,) if quick else (2048, 8192)):
        x = torch.randn(m, k, device=dev, dtype=dt)
        with torch.no_grad():
            harness.check_close("sparse", f"2:4 M={m}", layer(x), x.float() @ w4m.float().t(), 0.02, 0.1)
            rows.append(compare("sparse", f"2:4 SparseLinear M={m} K=N={k} bf16 (GPU)", lambda x=x: layer(x),
                                "F.linear dense bf16", lambda x=x: F.linear(x, w4m), target=1.1))  # fmt: skip
    w, mask = _masked_weight(n, k, 0.9)
    wm = (w * mask).to(dev)
    csr = sparse_ops.to_csr(w.to(dev), mask.to(dev))
    torch_csr = wm.to_sparse_csr()
    for m in (1, 256):
        x = torch.randn(m, k, device=dev)
        xt = x.t().contiguous()
        for b in harness.gpu_backends("sparse_csr_linear"):
            fn = harness.on_backend(b, lambda x=x: torch.ops.pyopt.sparse_csr_linear(x, *csr, None, n))
            harness.check_close("sparse", f"CSR [{b}] M={m}", fn(), x.double() @ wm.double().t(), 1e-4, 1e-4)
            rows.append(compare("sparse", f"(info) 90% CSR [{b}] M={m} K=N={k} fp32 (GPU)", fn,
                                "F.linear dense fp32", lambda x=x: F.linear(x, wm)))  # fmt: skip
            rows.append(compare("sparse", f"(info) 90% CSR [{b}] M={m} K=N={k} fp32 (GPU)", fn,
                                "torch CSR W@x^T", lambda xt=xt: torch_csr @ xt))  # fmt: skip
    return rows
