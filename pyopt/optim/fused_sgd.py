"""FusedSGD: torch.optim.SGD's exact update in one fused multi-tensor pass, with masks and AMP.

Semantics (torch/optim/sgd.py, `_single_tensor_sgd`): maximize -> weight decay -> momentum (the first
time a parameter has a grad its buffer becomes that grad, per parameter) -> Nesterov -> p -= lr * g.
Additions over torch:
  * masks: a parameter with `pyopt.nn.get_param_mask(p)` keeps its masked-out entries, and those of
    its momentum buffer, exactly zero — in the same pass, so pruned weights are never revived;
  * GradScaler: `_step_supports_amp_scaling` — GradScaler hands over `grad_scale` / `found_inf` and the
    kernel unscales; an overflow skips the step without touching any state (new buffers included);
    afterwards the grads are left unscaled, as torch.optim.SGD leaves them;
  * bf16/fp16 parameters are updated in float32 and rounded once; `master_weights=True` keeps a float32
    master copy (state key "master_param") and a float32 momentum buffer;
  * DTensor parameters (FSDP2's `fully_shard`, tensor parallel): every rank steps its local shards, all
    of them in the same one fused call, with the masks sharded like their weights (no communication);
  * complex parameters are stepped as their real views (SGD's update is the same on each component).
The state uses torch's key "momentum_buffer", so state_dicts move between torch.optim.SGD and FusedSGD.
"""

from __future__ import annotations

import collections
import functools
import operator
import sys

import torch

from .._rules import LOW_PRECISION, MASK_ATTR, set_param_mask
from ..ops.native import direct

_FUSED_SGD = direct("fused_sgd_")

# `any(map(_is_none, xs))`: the per-element test runs in C (a generator expression costs ~2x for
# thousands of parameters, and `None in tensors` would call Tensor.__eq__).
_is_none = functools.partial(operator.is_, None)

_FLOAT32_STATE = ("master_param", "momentum_buffer")  # kept float32 under master_weights


class _State(collections.defaultdict):
    """`opt.state` that counts its own changes, so that FusedSGD's per-group cache of the per-parameter
    state dicts is rebuilt after `opt.state.clear()`, `del opt.state[p]` or `opt.state[p] = {...}`:
    no momentum may live on outside `opt.state` (what state_dict() checkpoints)."""

    def __init__(self, *args):
        self.version = 0
        super().__init__(*args)

    def __setitem__(self, key, value):  # also reached from defaultdict's __missing__
        self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.version += 1
        super().__delitem__(key)

    def clear(self):
        self.version += 1
        super().clear()

    def pop(self, *args):
        self.version += 1
        return super().pop(*args)

    def popitem(self):
        self.version += 1
        return super().popitem()

    def setdefault(self, key, default=None):
        self.version += 1
        return super().setdefault(key, default)

    def update(self, *args, **kwargs):
        self.version += 1
        super().update(*args, **kwargs)

    def __ior__(self, other):
        self.version += 1
        return super().__ior__(other)


def _dtensor_type():
    """torch's DTensor class if torch.distributed.tensor has been imported (else no DTensor can exist:
    pyopt does not import it for users who never shard)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None)


def _to_local(t, dtensor):
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def _local_shards(params, grads, bufs, masters, masks):
    """DTensors -> their local shards on this rank (views: the kernel writes through them). A grad laid
    out otherwise than its parameter is redistributed first; a mask given as a full tensor is sharded
    like its parameter, once (pyopt._rules.set_param_mask keeps it so)."""
    dtensor = _dtensor_type()
    local_grads = []
    for p, g in zip(params, grads, strict=True):
        if isinstance(p, dtensor) and isinstance(g, dtensor):
            if g.placements != p.placements or g.device_mesh != p.device_mesh:
                g = g.redistribute(p.device_mesh, p.placements)
        local_grads.append(_to_local(g, dtensor))
    local_masks = []
    for p, m in zip(params, masks, strict=False):
        if m is not None and isinstance(p, dtensor) and not isinstance(m, dtensor):
            set_param_mask(p, m)
            m = getattr(p, MASK_ATTR)
        local_masks.append(_to_local(m, dtensor) if m is not None else None)
    return (
        [_to_local(p, dtensor) for p in params],
        local_grads,
        [_to_local(b, dtensor) for b in bufs],
        [_to_local(m, dtensor) for m in masters],
        local_masks,
    )


def _real_views(params, grads, bufs, masters, masks):
    """Complex tensors -> their float views (..., 2); a complex parameter's mask covers both parts."""
    cplx = [p.is_complex() for p in params]

    def real(ts):
        return [torch.view_as_real(t) if c else t for t, c in zip(ts, cplx, strict=False)]

    masks = [
        torch.stack([m, m], dim=-1) if m is not None and c else m for m, c in zip(masks, cplx, strict=False)
    ]
    return real(params), real(grads), real(bufs), real(masters), masks


def _rounds(params) -> list[list[int]] | None:
    """Indices split so that no round holds one tensor twice (None when none is listed twice): round k
    holds the k-th occurrence of each parameter, in order — torch's for-loop applies a duplicated
    parameter's step once per occurrence, in list order."""
    seen: dict[int, int] = {}
    rounds: list[list[int]] = []
    for i, p in enumerate(params):
        k = seen.get(id(p), 0)
        seen[id(p)] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
    return rounds if len(rounds) > 1 else None


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
        *,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
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
        # foreach / fused choose among torch's implementations; FusedSGD has one (fused), so they are
        # accepted for drop-in code and change nothing. differentiable=True would need autograd through
        # the step, which an in-place kernel cannot give.
        if differentiable:
            raise RuntimeError(
                "FusedSGD does not support differentiable=True (its step is an in-place fused kernel "
                "outside autograd); use torch.optim.SGD(differentiable=True) for that"
            )
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
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
        self.state = _State(dict, self.state)
        # GradScaler then sets self.grad_scale / self.found_inf instead of unscaling the grads itself.
        self._step_supports_amp_scaling = True
        self._cache: dict[int, tuple] = {}

    def __setstate__(self, state):
        super().__setstate__(state)
        if not isinstance(self.state, _State):
            self.state = _State(dict, self.state)
        self._cache = {}
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.setdefault("master_weights", False)

    def load_state_dict(self, state_dict) -> None:
        # A state_dict from torch.optim.SGD (or an older FusedSGD) lacks FusedSGD's own keys: those keep
        # this optimizer's values (master_weights must not silently turn off), not the defaults.
        own = [{k: group[k] for k in self.defaults} for group in self.param_groups]
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) == len(own) and any(k not in g for g in saved_groups for k in self.defaults):
            state_dict = dict(state_dict)
            state_dict["param_groups"] = [
                {**mine, **saved} for mine, saved in zip(own, saved_groups, strict=True)
            ]
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

    def _group_info(self, group, params, full: bool) -> tuple[list[dict], bool, list[list[int]] | None]:
        """(state dicts, any DTensor?, rounds) of `params`. The state dicts only where the step keeps
        state (momentum or master weights), as torch creates no state entry otherwise. For the group's
        full params list (every param has a grad) the result is cached: hashing thousands of tensors on
        every step costs more than the kernel for small ones. Valid while the list is the same object
        of the same length, opt.state has not changed and the group still needs (or not) state."""
        state = self.state
        need = bool(group["master_weights"] or group["momentum"] != 0)
        version = getattr(state, "version", None)  # None: a plain dict assigned by hand, never cached
        hit = self._cache.get(id(group)) if full else None
        if hit is not None and version is not None:
            h_state, h_version, h_params, h_len, h_need = hit[0]
            same = h_state is state and h_params is params  # identity: never Tensor.__eq__
            if same and (h_version, h_len, h_need) == (version, len(params), need):
                return hit[1]
        dtensor = _dtensor_type()
        info = (
            [state[p] for p in params] if need else [],
            dtensor is not None and any(isinstance(p, dtensor) for p in params),
            _rounds(params),
        )
        if full:  # the version after the entries above were created
            self._cache[id(group)] = (
                (state, getattr(state, "version", None), params, len(params), need),
                info,
            )
        return info

    def _step_group(self, group, grad_scale, found_inf) -> None:
        params = group["params"]
        grads = [p.grad for p in params]
        full = not any(map(_is_none, grads))
        if not full:  # parameters without a grad are skipped (and get no state entry), as in torch
            params = [p for p, g in zip(params, grads, strict=True) if g is not None]
            grads = [g for g in grads if g is not None]
        if not params:
            return
        dicts, has_dtensor, rounds = self._group_info(group, params, full)
        if group["master_weights"] and any(p.dtype not in LOW_PRECISION for p in params):
            raise ValueError("master_weights=True needs every parameter of the group to be bf16 or fp16")
        if rounds is None:
            self._step_params(group, params, grads, dicts, has_dtensor, grad_scale, found_inf, None)
        else:  # a parameter listed twice (torch warns at construction): one call per occurrence
            fresh = {id(p) for p, d in zip(params, dicts, strict=False) if "momentum_buffer" not in d}
            for idx in rounds:
                sub = (
                    [params[i] for i in idx],
                    [grads[i] for i in idx],
                    [dicts[i] for i in idx] if dicts else [],
                )
                self._step_params(group, *sub, has_dtensor, grad_scale, found_inf, fresh)
        if grad_scale is not None:
            # torch.optim.SGD leaves p.grad unscaled after scaler.step (clipping, logging and a second
            # optimizer read it); the kernel unscaled its own copy only. float32(1 / scale), as
            # GradScaler._unscale_grads_, on the grads' device (no host synchronisation).
            dtensor = _dtensor_type()
            unique = [_to_local(g, dtensor) for g in {id(g): g for g in grads}.values()]
            unique = [torch.view_as_real(g) if g.is_complex() else g for g in unique]
            inv = grad_scale.double().reciprocal().float()
            torch._foreach_mul_(unique, inv.to(unique[0].device))

    def _step_params(self, group, params, grads, dicts, has_dtensor, grad_scale, found_inf, fresh):
        """One fused call over `params` (no tensor twice). fresh: ids of parameters whose momentum buffer
        did not exist when the step began (a duplicated parameter gets a new one per occurrence)."""
        momentum = group["momentum"]
        master = group["master_weights"]
        new_state = []  # (state dict, key, tensor): committed only if the step is not skipped
        masters = [d.get("master_param") for d in dicts] if master else []
        if any(map(_is_none, masters)):
            for i, p in enumerate(params):
                if masters[i] is None:
                    masters[i] = p.float()
                    new_state.append((dicts[i], "master_param", masters[i]))
        bufs = [d.get("momentum_buffer") for d in dicts] if momentum != 0 else []
        if fresh is not None and bufs:
            bufs = [None if id(p) in fresh else b for p, b in zip(params, bufs, strict=True)]
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
        if has_dtensor:  # every rank steps its own shards; the state tensors are DTensors too
            params, grads, bufs, masters, masks = _local_shards(params, grads, bufs, masters, masks)
        if any(p.is_complex() for p in params):
            params, grads, bufs, masters, masks = _real_views(params, grads, bufs, masters, masks)
        lr = group["lr"]
        lr_tensor = None
        if isinstance(lr, torch.Tensor):
            lr_tensor, lr = (lr, 0.0) if lr.device == params[0].device else (None, lr.item())
        _FUSED_SGD(
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
