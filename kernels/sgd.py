"""Triton kernel of pyopt::fused_sgd_: torch.optim.SGD's update for one tensor per launch.

The functor is the same as the C++ one (csrc/cpu/sgd.cpp): widen to the compute type (float32, float64
for float64 params), g = grad * scale; g = fma(w, wd, g); b = first ? g : fma(g, 1 - dampening, b * mu);
g = nesterov ? fma(b, mu, g) : b; w = fma(g, -lr, w); masked-out entries of w and b set to zero.
The hyperparameters come from a small device tensor (so a tensor lr or GradScaler's scale never needs a
host synchronisation) and `found_inf != 0` turns every store off.
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK = 1024
# Row layout of the `hyper` tensor built by the launcher (pyopt/ops/sgd.py).
H_SCALE, H_WD, H_MOM, H_ONE_MINUS_DAMP, H_NEG_LR = range(5)


@triton.jit
def sgd_kernel(
    p_ptr, g_ptr, buf_ptr, master_ptr, mask_ptr, hyper_ptr, found_inf_ptr, n,
    HAS_MOMENTUM: tl.constexpr, FIRST: tl.constexpr, NESTEROV: tl.constexpr, HAS_WD: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_MASTER: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    ok = inb & (tl.load(found_inf_ptr + tl.zeros([BLOCK], tl.int32)) == 0)  # broadcast: no scalar&vector
    scale = tl.load(hyper_ptr + 0)
    cdt = scale.dtype
    if HAS_MASTER:
        w = tl.load(master_ptr + offs, mask=inb, other=0.0).to(cdt)
    else:
        w = tl.load(p_ptr + offs, mask=inb, other=0.0).to(cdt)
    g = tl.load(g_ptr + offs, mask=inb, other=0.0).to(cdt) * scale
    if HAS_WD:
        g = tl.fma(w, tl.load(hyper_ptr + 1), g)
    if HAS_MASK:
        keep = tl.load(mask_ptr + offs, mask=inb, other=0) != 0
    if HAS_MOMENTUM:
        mom = tl.load(hyper_ptr + 2)
        if FIRST:
            b = g
        else:
            b_old = tl.load(buf_ptr + offs, mask=inb, other=0.0).to(cdt)
            b = tl.fma(g, tl.load(hyper_ptr + 3), b_old * mom)
        if NESTEROV:
            g = tl.fma(b, mom, g)
        else:
            g = b
        if HAS_MASK:
            b = tl.where(keep, b, 0.0)
        tl.store(buf_ptr + offs, b.to(buf_ptr.dtype.element_ty), mask=ok)
    w = tl.fma(g, tl.load(hyper_ptr + 4), w)
    if HAS_MASK:
        w = tl.where(keep, w, 0.0)
    if HAS_MASTER:
        tl.store(master_ptr + offs, w.to(tl.float32), mask=ok)
    tl.store(p_ptr + offs, w.to(p_ptr.dtype.element_ty), mask=ok)


def launch_sgd(p, g, buf, master, mask, hyper, found_inf, first, nesterov, has_wd) -> None:
    """One tensor's step (all tensors contiguous, on one device; `hyper` and `found_inf` on it too)."""
    n = p.numel()
    if n == 0:
        return
    dummy = p
    sgd_kernel[(triton.cdiv(n, BLOCK),)](
        p, g, buf if buf is not None else dummy, master if master is not None else dummy,
        mask if mask is not None else dummy, hyper, found_inf, n,
        HAS_MOMENTUM=buf is not None, FIRST=bool(first), NESTEROV=bool(nesterov), HAS_WD=bool(has_wd),
        HAS_MASK=mask is not None, HAS_MASTER=master is not None, BLOCK=BLOCK,
    )  # fmt: skip
