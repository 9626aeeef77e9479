"""FusedSGD vs torch.optim.SGD (fused / foreach), masked pruned-training steps, many small tensors.

Bytes model (fp32, momentum): each step reads p, g, buf and writes p, buf = 20 B/param; a mask adds 1 B.
"""

from __future__ import annotations

import harness
import torch

import pyopt
from pyopt.nn import get_param_mask, set_param_mask
from pyopt.optim import FusedSGD

HYPER = dict(lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)


def make_params(sizes, masks=False):
    """Leaf params with persistent grads (the optimizer step alone is timed)."""
    gen = torch.Generator().manual_seed(0)
    params = []
    for n in sizes:
        p = torch.randn(n, generator=gen).requires_grad_(True)
        p.grad = torch.randn(n, generator=gen)
        if masks:
            set_param_mask(p, torch.rand(n, generator=gen) > 0.5)
        params.append(p)
    return params


def clone(params):
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_(True)
        q.grad = p.grad
        out.append(q)
    return out


def spread(total: int, count: int) -> list[int]:
    """`count` tensor sizes from 0.5x to 1.5x the mean, summing to `total` (a model's mix of shapes)."""
    mean = total / count
    sizes = [int(mean * (0.5 + i / max(count - 1, 1))) for i in range(count)]
    sizes[-1] += total - sum(sizes)
    return sizes


def dense_rows(total: int, count: int) -> list[harness.Row]:
    ours = make_params(spread(total, count))
    fused, foreach = clone(ours), clone(ours)
    opt = FusedSGD(ours, **HYPER)
    opt_fused = torch.optim.SGD(fused, fused=True, **HYPER)
    opt_foreach = torch.optim.SGD(foreach, foreach=True, **HYPER)
    shape = f"{count} tensors / {total / 1e6:.2f}M fp32, nesterov+wd"
    return [
        harness.compare(
            "sgd", shape, opt.step, "torch SGD fused", opt_fused.step, target=1.0, nbytes=20 * total
        ),
        harness.compare("sgd", shape, opt.step, "torch SGD foreach", opt_foreach.step, target=3.0),
    ]


def masked_row(total: int, count: int) -> harness.Row:
    """Pruned training: one masked pass vs torch fused + re-applying the mask to params and buffers."""
    masked = make_params(spread(total, count), masks=True)
    base = clone(masked)
    masks = [get_param_mask(p) for p in masked]
    opt_masked = FusedSGD(masked, **HYPER)
    opt_base = torch.optim.SGD(base, fused=True, **HYPER)
    opt_base.step()
    bufs = [opt_base.state[p]["momentum_buffer"] for p in base]

    def masked_baseline():
        opt_base.step()
        with torch.no_grad():
            torch._foreach_mul_(base, masks)
            torch._foreach_mul_(bufs, masks)

    return harness.compare(
        "sgd", f"masked step, {count} tensors / {total / 1e6:.2f}M fp32", opt_masked.step,
        "torch fused + p*=mask, buf*=mask", masked_baseline, target=1.5, nbytes=21 * total,
    )  # fmt: skip


def small_tensors_row(count: int, size: int = 1000) -> harness.Row:
    """Many small tensors: the per-parameter Python work of step() dominates."""
    small = make_params([size] * count)
    small_fused = clone(small)
    opt, opt_fused = FusedSGD(small, **HYPER), torch.optim.SGD(small_fused, fused=True, **HYPER)
    return harness.compare(
        "sgd", f"{count} tensors x {size} fp32", opt.step, "torch SGD fused", opt_fused.step,
        target=1.5, nbytes=20 * size * count,
    )  # fmt: skip


def per_call_rows() -> list[harness.Row]:
    """Per-call overhead of one step of one 64-element param, momentum + Nesterov + weight decay: the op as
    FusedSGD.step calls it (the typed binding, pyopt._C.ops) against torch's own fused SGD op
    (torch._fused_sgd_), both called directly (goal: <= 1.3x its time); through torch.ops.pyopt (info) the
    generic conversion of its 15 arguments adds its own cost."""
    p, g, b = torch.randn(64), torch.randn(64), torch.randn(64)
    p2, b2 = p.clone(), b.clone()
    wd, mom, lr = HYPER["weight_decay"], HYPER["momentum"], HYPER["lr"]
    args = ([p], [g], [b], [], [], [False], lr, wd, mom, 0.0, True, False, None, None, None)
    typed = pyopt.ops.native.direct("fused_sgd_")
    ours = lambda: typed(*args)  # noqa: E731
    generic = lambda: torch.ops.pyopt.fused_sgd_(*args)  # noqa: E731
    theirs = lambda: torch._fused_sgd_(  # noqa: E731
        [p2],
        [g],
        [b2],
        weight_decay=wd,
        momentum=mom,
        lr=lr,
        dampening=0.0,
        nesterov=True,
        maximize=False,
        is_first_step=False,
    )
    theirs = harness.calls(theirs)
    return [
        harness.compare(
            "sgd", f"per call: fused_sgd_ one 64-element param ({harness.CALLS} calls)", harness.calls(ours),
            "torch._fused_sgd_", theirs, target=1 / 1.3,
        ),
        harness.compare(
            "sgd", f"(info) per call: torch.ops.pyopt.fused_sgd_ one 64-element param ({harness.CALLS} calls)",
            harness.calls(generic), "torch._fused_sgd_", theirs,
        ),
    ]  # fmt: skip


def run(quick: bool) -> list[harness.Row]:
    total, count = (1_810_000, 10) if quick else (18_100_000, 100)
    return [
        *dense_rows(total, count), masked_row(total, count), small_tensors_row(200 if quick else 1000),
        *per_call_rows(),
    ]  # fmt: skip


def run_gpu(quick: bool = False) -> list[harness.Row]:
    """FusedSGD on the GPU (each GPU backend) vs torch.optim.SGD(fused=True) on the same parameters:
    100 fp32 tensors / 18.1M params, nesterov + weight decay; bandwidth against a device copy of the same
    bytes (20 B/param). Masked: one pass vs torch fused + re-applying the mask (21 B/param)."""
    dev = "cuda"
    total, count = (1_810_000, 10) if quick else (18_100_000, 100)
    rows = []
    shape = f"{count} tensors / {total / 1e6:.2f}M fp32, nesterov+wd (GPU)"

    def to_dev(params):
        out = []
        for p in params:
            q = p.detach().to(dev).requires_grad_(True)
            q.grad = p.grad.to(dev)
            mask = get_param_mask(p)
            if mask is not None:
                set_param_mask(q, mask.to(dev))
            out.append(q)
        return out

    base = make_params(spread(total, count))
    for b in harness.gpu_backends("fused_sgd_"):  # one step from the same state: same parameters as torch's
        ours, ref = to_dev(base), to_dev(base)
        with pyopt.use_backend(b):
            FusedSGD(ours, **HYPER).step()
        torch.optim.SGD(ref, fused=True, **HYPER).step()
        harness.check_close("sgd", f"[{b}] one step", torch.cat([p.detach() for p in ours]),
                            torch.cat([p.detach() for p in ref]), rtol=1e-6, atol=1e-7)  # fmt: skip
    theirs = to_dev(base)
    opt_fused = torch.optim.SGD(theirs, fused=True, **HYPER)
    for b in harness.gpu_backends("fused_sgd_"):
        ours = to_dev(base)
        opt = FusedSGD(ours, **HYPER)
        rows.append(harness.compare(
            "sgd", f"[{b}] {shape}", harness.on_backend(b, opt.step), "torch SGD fused", opt_fused.step,
            device=dev, target=1.0, nbytes=20 * total, memcpy_target_pct=85.0,
        ))  # fmt: skip
    masked_base = make_params(spread(total, count), masks=True)
    theirs_m = to_dev(masked_base)
    masks = [get_param_mask(p) for p in theirs_m]
    opt_base = torch.optim.SGD(theirs_m, fused=True, **HYPER)
    opt_base.step()
    bufs = [opt_base.state[p]["momentum_buffer"] for p in theirs_m]

    def masked_baseline():
        opt_base.step()
        with torch.no_grad():
            torch._foreach_mul_(theirs_m, masks)
            torch._foreach_mul_(bufs, masks)

    for b in harness.gpu_backends("fused_sgd_"):
        ours_m = to_dev(masked_base)
        opt_m = FusedSGD(ours_m, **HYPER)
        rows.append(harness.compare(
            "sgd", f"[{b}] masked step, {count} tensors / {total / 1e6:.2f}M fp32 (GPU)",
            harness.on_backend(b, opt_m.step), "torch fused + p*=mask, buf*=mask", masked_baseline,
            device=dev, target=1.5, nbytes=21 * total,
        ))  # fmt: skip
    return rows
