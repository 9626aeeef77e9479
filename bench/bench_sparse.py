"""sparse family benchmarks: pyopt's CSR/BSR/masked kernels vs dense F.linear and torch's CSR matmul.

Issue targets (K = N = 4096, float32, ratios in one run): 90% unstructured >= 4x dense at M=64 and 256,
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
from pyopt.ops import sparse as sparse_ops


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
