"""fused_sgd_, pure torch: the kernel on every device without a native one, and the tests' oracle.

torch's for-loop SGD (torch/optim/sgd.py `_single_tensor_sgd`), op for op, so float32 and float64 results are
bit-identical to torch.optim.SGD(foreach=False); bf16/fp16 storage is widened to float32 for the whole step and
rounded once at the end.
"""

from __future__ import annotations

from ..._rules import LOW_PRECISION
from .. import checks as C
from ..backends import reference


def inv_grad_scale(grad_scale) -> float:
    """GradScaler's unscale factor: float32(1 / scale), as `_unscale_grads_` computes it."""
    if grad_scale is None:
        return 1.0
    return grad_scale.double().reciprocal().float().item()


@reference("fused_sgd_")
def fused_sgd_ref(
    params, grads, momentum_buffers, master_params, masks, first_step, lr, weight_decay, momentum, dampening,
    nesterov, maximize, lr_tensor, grad_scale, found_inf,
):  # fmt: skip
    C.check_fused_sgd_lists(params, grads, momentum_buffers, master_params, masks, first_step, lr, lr_tensor)
    C.check_fused_sgd_tensors(params, grads, momentum_buffers, master_params, masks)
    if found_inf is not None and bool(found_inf.item() != 0):
        return
    # torch.optim.SGD with a tensor lr calls add_(grad, alpha=-lr): the tensor's value as a Python float
    lr = lr if lr_tensor is None else lr_tensor.item()
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
