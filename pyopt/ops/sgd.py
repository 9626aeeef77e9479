"""sgd family: reference, cpu, triton and cuda implementations of pyopt::fused_sgd_.

The reference is torch's for-loop SGD (torch/optim/sgd.py `_single_tensor_sgd`), op for op, so float32 and
float64 results are bit-identical to torch.optim.SGD(foreach=False); bf16/fp16 storage is widened to
float32 for the whole step and rounded once at the end.
"""

from __future__ import annotations

import torch

from .._rules import LOW_PRECISION
from .backends import register, requested_isa
from .checks import check_fused_sgd_tensors


def _skip_step(found_inf) -> bool:
    return found_inf is not None and bool(found_inf.item() != 0)


def inv_grad_scale(grad_scale) -> float:
    """GradScaler's unscale factor: float32(1 / scale), as `_unscale_grads_` computes it."""
    if grad_scale is None:
        return 1.0
    return grad_scale.double().reciprocal().float().item()


def host_lr(lr: float, lr_tensor) -> float:
    # torch.optim.SGD with a tensor lr calls add_(grad, alpha=-lr): the tensor's value as a Python float.
    return lr if lr_tensor is None else lr_tensor.item()


@register("fused_sgd_", "reference")
def fused_sgd_ref(
    params, grads, momentum_buffers, master_params, masks, first_step, lr, weight_decay, momentum, dampening,
    nesterov, maximize, lr_tensor, grad_scale, found_inf,
):  # fmt: skip
    check_fused_sgd_tensors(params, grads, momentum_buffers, master_params, masks)
    if _skip_step(found_inf):
        return
    lr = host_lr(lr, lr_tensor)
    inv_scale = inv_grad_scale(grad_scale)
    for i, p in enumerate(params):
        low = p.dtype in LOW_PRECISION
        w = master_params[i] if master_params else (p.float() if low else p)
        grad = grads[i].to(w.dtype)
        if inv_scale != 1.0:
            grad = grad * inv_scale
        if maximize:
            grad = -grad
        if weight_decay != 0:
            grad = grad.add(w, alpha=weight_decay)
        buf = None
        if momentum_buffers:
            buf = momentum_buffers[i].to(w.dtype)  # a copy only when widened
            if first_step[i]:
                buf.copy_(grad)
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        w.add_(grad, alpha=-lr)
        mask = masks[i] if masks else None
        if mask is not None:
            w.masked_fill_(~mask, 0)
            if buf is not None:
                buf.masked_fill_(~mask, 0)
        if w is not p:
            p.copy_(w)
        if buf is not None and buf is not momentum_buffers[i]:
            momentum_buffers[i].copy_(buf)


@register("fused_sgd_", "cpu")
def fused_sgd_cpu(
    params, grads, momentum_buffers, master_params, masks, first_step, lr, weight_decay, momentum, dampening,
    nesterov, maximize, lr_tensor, grad_scale, found_inf,
):  # fmt: skip
    if _skip_step(found_inf):  # a CPU scalar: reading it costs no synchronisation
        return
    torch.ops.pyopt_cpu.fused_sgd.default(
        params, grads, momentum_buffers, master_params, masks, list(map(int, first_step)),
        host_lr(lr, lr_tensor), weight_decay, momentum, dampening, nesterov, maximize,
        inv_grad_scale(grad_scale), requested_isa(),
    )  # fmt: skip


def device_hyper(device, dtype, lr, weight_decay, momentum, dampening, maximize, lr_tensor, grad_scale):
    """[scale, weight_decay, momentum, 1 - dampening, -lr] as a `dtype` tensor on `device`, built without
    a host synchronisation (a tensor lr and GradScaler's scale stay on the device)."""
    hyper = torch.tensor([1.0, weight_decay, momentum, 1 - dampening, -lr], dtype=torch.float64)
    hyper = hyper.to(device=device, dtype=dtype)
    if grad_scale is not None:
        hyper[0:1].copy_(grad_scale.double().reciprocal().float().reshape(1))
    if maximize:
        hyper[0:1].neg_()
    if lr_tensor is not None:
        hyper[4:5].copy_(lr_tensor.reshape(1).neg())
    return hyper


class _Contiguous:
    """Contiguous views of the tensors a kernel writes through raw pointers; copies go back on exit."""

    def __init__(self, tensors):
        self.orig = tensors
        self.tensors = [t if t.is_contiguous() else t.contiguous() for t in tensors]

    def __enter__(self):
        return self.tensors

    def __exit__(self, *exc):
        for o, c in zip(self.orig, self.tensors, strict=True):
            if c is not o:
                o.copy_(c)


def _found_inf_f32(found_inf, device):
    return None if found_inf is None else found_inf.reshape(1).to(device=device, dtype=torch.float32)


@register("fused_sgd_", "triton")
def fused_sgd_triton(
    params, grads, momentum_buffers, master_params, masks, first_step, lr, weight_decay, momentum, dampening,
    nesterov, maximize, lr_tensor, grad_scale, found_inf,
):  # fmt: skip
    check_fused_sgd_tensors(params, grads, momentum_buffers, master_params, masks)
    if not params:
        return
    from ..kernels.sgd import launch_sgd

    device = params[0].device
    found = _found_inf_f32(found_inf, device)
    if found is None:
        found = torch.zeros(1, device=device)
    # One launch per (param dtype, masked?) group: the storage types and the mask are compile-time.
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.dtype, bool(masks) and masks[i] is not None), []).append(i)
    with (
        _Contiguous(params) as ps,
        _Contiguous(momentum_buffers) as bs,
        _Contiguous(master_params) as ms,
    ):  # fmt: skip
        for (dtype, masked), idx in groups.items():
            cdt = torch.float64 if dtype == torch.float64 else torch.float32
            hyper = device_hyper(
                device, cdt, lr, weight_decay, momentum, dampening, maximize, lr_tensor, grad_scale
            )
            launch_sgd(
                [ps[i] for i in idx], [grads[i].contiguous() for i in idx],
                [bs[i] for i in idx] if bs else None, [ms[i] for i in idx] if ms else None,
                [masks[i].contiguous() for i in idx] if masked else None,
                [first_step[i] for i in idx] if bs else [], hyper, found, nesterov, weight_decay != 0,
            )  # fmt: skip


@register("fused_sgd_", "cuda")
def fused_sgd_cuda(
    params, grads, momentum_buffers, master_params, masks, first_step, lr, weight_decay, momentum, dampening,
    nesterov, maximize, lr_tensor, grad_scale, found_inf,
):  # fmt: skip
    if not params:
        return
    if any(g.is_sparse for g in grads):  # before .contiguous(), which sparse tensors refuse differently
        raise RuntimeError("FusedSGD does not support sparse gradients")
    hyper = device_hyper(
        params[0].device,
        torch.float64,
        lr,
        weight_decay,
        momentum,
        dampening,
        maximize,
        lr_tensor,
        grad_scale,
    )
    with (
        _Contiguous(params) as ps,
        _Contiguous(momentum_buffers) as bs,
        _Contiguous(master_params) as ms,
    ):  # fmt: skip
        torch.ops.pyopt_cuda.fused_sgd(
            ps, [g.contiguous() for g in grads], bs, ms,
            [None if m is None else m.contiguous() for m in masks], [int(f) for f in first_step],
            hyper, _found_inf_f32(found_inf, params[0].device), weight_decay != 0, nesterov,
        )  # fmt: skip
