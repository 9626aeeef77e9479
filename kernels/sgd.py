"""Triton kernel of pyopt::fused_sgd_: one launch steps many tensors (multi-tensor apply).

The launcher builds, per group of tensors with the same storage types, tables of their addresses and a list
of BLOCK-element chunks over all of them; program i steps chunk i. The functor is the one of
csrc/cpu/sgd.cpp: widen to the compute type (float32, float64 for float64 params), g = grad * scale;
g = fma(w, wd, g); b = first ? g : fma(g, 1 - dampening, b * mu); g = nesterov ? fma(b, mu, g) : b;
w = fma(g, -lr, w); masked-out entries of w and b set to zero. The hyperparameters come from a small device
tensor (a tensor lr or GradScaler's scale never needs a host synchronisation) and `found_inf != 0` turns
every store off.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
TL_DTYPE = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


@triton.jit
def sgd_kernel(
    chunk_tensor, chunk_start, numel, p_addr, g_addr, buf_addr, master_addr, mask_addr, first_flags,
    hyper_ptr, found_inf_ptr,
    P_DTYPE: tl.constexpr, B_DTYPE: tl.constexpr, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
    HAS_WD: tl.constexpr, HAS_MASK: tl.constexpr, HAS_MASTER: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor + pid)
    offs = tl.load(chunk_start + pid) + tl.arange(0, BLOCK)
    inb = offs < tl.load(numel + t)
    ok = inb & (tl.load(found_inf_ptr + tl.zeros([BLOCK], tl.int32)) == 0)  # broadcast: no scalar&vector
    p_ptr = tl.load(p_addr + t).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(g_addr + t).to(tl.pointer_type(P_DTYPE))
    scale = tl.load(hyper_ptr + 0)
    cdt = scale.dtype
    if HAS_MASTER:
        master_ptr = tl.load(master_addr + t).to(tl.pointer_type(tl.float32))
        w = tl.load(master_ptr + offs, mask=inb, other=0.0).to(cdt)
    else:
        w = tl.load(p_ptr + offs, mask=inb, other=0.0).to(cdt)
    g = tl.load(g_ptr + offs, mask=inb, other=0.0).to(cdt) * scale
    if HAS_WD:
        g = tl.fma(w, tl.load(hyper_ptr + 1), g)
    if HAS_MASK:
        mask_ptr = tl.load(mask_addr + t).to(tl.pointer_type(tl.int8))
        keep = tl.load(mask_ptr + offs, mask=inb, other=0) != 0
    if HAS_MOMENTUM:
        mom = tl.load(hyper_ptr + 2)
        buf_ptr = tl.load(buf_addr + t).to(tl.pointer_type(B_DTYPE))
        first = tl.load(first_flags + t + tl.zeros([BLOCK], tl.int32)) != 0
        b_old = tl.load(buf_ptr + offs, mask=inb & (first == 0), other=0.0).to(cdt)
        b = tl.where(first, g, tl.fma(g, tl.load(hyper_ptr + 3), b_old * mom))
        if NESTEROV:
            g = tl.fma(b, mom, g)
        else:
            g = b
        if HAS_MASK:
            b = tl.where(keep, b, 0.0)
        tl.store(buf_ptr + offs, b.to(B_DTYPE), mask=ok)
    w = tl.fma(g, tl.load(hyper_ptr + 4), w)
    if HAS_MASK:
        w = tl.where(keep, w, 0.0)
    if HAS_MASTER:
        tl.store(master_ptr + offs, w.to(tl.float32), mask=ok)
    tl.store(p_ptr + offs, w.to(P_DTYPE), mask=ok)


def launch_sgd(params, grads, bufs, masters, masks, first_step, hyper, found_inf, nesterov, has_wd) -> None:
    """One launch for tensors sharing dtype and flags (all contiguous, on hyper's device).

    bufs / masters / masks: lists like params, or None; masks must all be tensors when given.
    """
    device = hyper.device
    chunk_tensor, chunk_start = [], []
    for i, p in enumerate(params):
        starts = range(0, p.numel(), BLOCK)
        chunk_tensor += [i] * len(starts)
        chunk_start += starts
    if not chunk_tensor:
        return

    def table(tensors):
        if tensors is None:
            return p_addrs  # never read: its HAS_* flag is off
        return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64).to(device)

    p_addrs = table(params)
    sgd_kernel[(len(chunk_tensor),)](
        torch.tensor(chunk_tensor, dtype=torch.int32).to(device),
        torch.tensor(chunk_start, dtype=torch.int64).to(device),
        torch.tensor([p.numel() for p in params], dtype=torch.int64).to(device),
        p_addrs, table(grads), table(bufs), table(masters),
        table(masks),  # bool bytes, read as int8
        torch.tensor([int(f) for f in first_step] if bufs is not None else [0], dtype=torch.int32).to(device),
        hyper, found_inf,
        P_DTYPE=TL_DTYPE[params[0].dtype], B_DTYPE=TL_DTYPE[bufs[0].dtype] if bufs is not None else tl.float32,
        HAS_MOMENTUM=bufs is not None, NESTEROV=bool(nesterov), HAS_WD=bool(has_wd), HAS_MASK=masks is not None,
        HAS_MASTER=masters is not None, BLOCK=BLOCK,
    )  # fmt: skip
