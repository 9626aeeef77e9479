"""fused_sgd_ on Triton (kernels/sgd.py): the CUDA kernel where the C++ extension is missing, and CPU tensors
under TRITON_INTERPRET=1 when forced (tests). One launch per (param dtype, masked?) group."""

from __future__ import annotations

import torch

from .. import checks as C
from ..backends import triton


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


@triton("fused_sgd_")
def fused_sgd_triton(
    params, grads, momentum_buffers, master_params, masks, first_step, lr, weight_decay, momentum, dampening,
    nesterov, maximize, lr_tensor, grad_scale, found_inf,
):  # fmt: skip
    C.check_fused_sgd_lists(params, grads, momentum_buffers, master_params, masks, first_step, lr, lr_tensor)
    C.check_fused_sgd_tensors(params, grads, momentum_buffers, master_params, masks)
    if not params:
        return
    from ...kernels.sgd import launch_sgd

    device = params[0].device
    found = (
        torch.zeros(1, device=device) if found_inf is None else found_inf.reshape(1).to(device, torch.float32)
    )
    groups: dict[tuple, list[int]] = {}  # the storage types and the mask are compile-time
    for i, p in enumerate(params):
        groups.setdefault((p.dtype, bool(masks) and masks[i] is not None), []).append(i)
    with _Contiguous(params) as ps, _Contiguous(momentum_buffers) as bs, _Contiguous(master_params) as ms:
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
