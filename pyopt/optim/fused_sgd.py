"""FusedSGD: torch.optim.SGD's exact update in one fused multi-tensor pass, with masks and AMP.

Semantics (torch/optim/sgd.py, `_single_tensor_sgd`): maximize -> weight decay -> momentum (the first
time a parameter has a grad its buffer becomes that grad, per parameter) -> Nesterov -> p -= lr * g.
Additions over torch:
  * masks: a parameter with `pyopt.nn.get_param_mask(p)` keeps its masked-out entries, and those of
    its momentum buffer, exactly zero — in the same pass, so pruned weights are never revived;
  * GradScaler: `_step_supports_amp_scaling` — GradScaler hands over `grad_scale` / `found_inf` and the
    kernel unscales; an overflow skips the step without touching any state (new buffers included);
  * bf16/fp16 parameters are updated in float32 and rounded once; `master_weights=True` keeps a float32
    master copy (state key "master_param") and a float32 momentum buffer.
The state uses torch's key "momentum_buffer", so state_dicts move between torch.optim.SGD and FusedSGD.
"""

from __future__ import annotations

import functools
import operator

import torch

from .._rules import LOW_PRECISION, MASK_ATTR

# `any(map(_is_none, xs))`: the per-element test runs in C (a generator expression costs ~2x for
# thousands of parameters, and `None in tensors` would call Tensor.__eq__).
_is_none = functools.partial(operator.is_, None)

_FLOAT32_STATE = ("master_param", "momentum_buffer")  # kept float32 under master_weights


class FusedSGD(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        maximize: bool = False,
        master_weights: bool = False,
    ):
        # The same checks and messages as torch.optim.SGD.
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            master_weights=master_weights,
        )
        super().__init__(params, defaults)
        # GradScaler then sets self.grad_scale / self.found_inf instead of unscaling the grads itself.
        self._step_supports_amp_scaling = True
        self._state_cache: dict[int, tuple] = {}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._state_cache = {}
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("master_weights", False)

    def load_state_dict(self, state_dict) -> None:
        # Optimizer.load_state_dict casts every state tensor to its parameter's dtype; master weights and
        # their buffers must stay float32, so restore those from the saved values.
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        for saved_group, group in zip(state_dict["param_groups"], self.param_groups, strict=True):
            if not group["master_weights"]:
                continue
            for pid, p in zip(saved_group["params"], group["params"], strict=True):
                st = self.state.get(p)
                for key in _FLOAT32_STATE:
                    if st is not None and key in st and pid in saved_state:
                        st[key] = saved_state[pid][key].to(device=p.device, dtype=torch.float32, copy=True)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf)
        return loss

    def _state_dicts(self, group, params) -> list[dict]:
        """`self.state[p]` for every p of `params`, cached per group: hashing thousands of tensors on every
        step costs more than the kernel for small ones. Valid while self.state and the group's params list
        are the same objects (load_state_dict replaces self.state) and the list keeps its length."""
        full = params is group["params"]
        hit = self._state_cache.get(id(group))
        if (
            full
            and hit is not None
            and hit[0] is self.state
            and hit[1] is params
            and len(hit[2]) == len(params)
        ):
            return hit[2]
        dicts = [self.state[p] for p in params]
        if full:
            self._state_cache[id(group)] = (self.state, params, dicts)
        return dicts

    def _step_group(self, group, grad_scale, found_inf) -> None:
        params = group["params"]
        grads = [p.grad for p in params]
        if any(map(_is_none, grads)):  # parameters without a grad are skipped, as in torch
            params = [p for p, g in zip(params, grads, strict=True) if g is not None]
            grads = [g for g in grads if g is not None]
        if not params:
            return
        momentum = group["momentum"]
        master = group["master_weights"]
        if master and any(p.dtype not in LOW_PRECISION for p in params):
            raise ValueError("master_weights=True needs every parameter of the group to be bf16 or fp16")
        dicts = self._state_dicts(group, params) if (master or momentum != 0) else []
        new_state = []  # (state dict, key, tensor): committed only if the step is not skipped
        masters = [d.get("master_param") for d in dicts] if master else []
        if any(map(_is_none, masters)):
            for i, p in enumerate(params):
                if masters[i] is None:
                    masters[i] = p.float()
                    new_state.append((dicts[i], "master_param", masters[i]))
        bufs = [d.get("momentum_buffer") for d in dicts] if momentum != 0 else []
        first_step = [False] * len(bufs)
        if any(map(_is_none, bufs)):
            buf_dtype = torch.float32 if master else None
            for i, p in enumerate(params):
                if bufs[i] is None:  # per parameter: its first step with a grad, whenever that comes
                    bufs[i] = torch.empty_like(p, dtype=buf_dtype)
                    first_step[i] = True
                    new_state.append((dicts[i], "momentum_buffer", bufs[i]))
        if new_state and found_inf is not None and found_inf.item() != 0:
            return  # overflow: keep the state exactly as it was (no new, uninitialised buffers)

        masks = [getattr(p, MASK_ATTR, None) for p in params]  # get_param_mask, inlined
        if all(map(_is_none, masks)):
            masks = []
        lr = group["lr"]
        lr_tensor = None
        if isinstance(lr, torch.Tensor):
            lr_tensor, lr = (lr, 0.0) if lr.device == params[0].device else (None, lr.item())
        torch.ops.pyopt.fused_sgd_.default(
            params,
            grads,
            bufs,
            masters,
            masks,
            first_step,
            float(lr),
            float(group["weight_decay"]),
            float(momentum),
            float(group["dampening"]),
            bool(group["nesterov"]),
            bool(group["maximize"]),
            lr_tensor,
            grad_scale,
            found_inf,
        )
        for st, key, value in new_state:
            st[key] = value
