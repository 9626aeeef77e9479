"""Gradual pruning: the cubic sparsity ramp of Zhu & Gupta 2017 ("To prune, or not to prune") and a driver.

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3     for t = t0, t0 + dt, ..., t0 + n * dt

t0 = begin_step, t0 + n*dt = end_step, dt = frequency. Between pruning steps the sparsity holds its value at
the last one (t is rounded down to t0 + k*dt); before t0 it is s_i, from end_step on s_f.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .._rules import get_param_mask
from . import masks as M
from .api import prune


def _check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return int(value)


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} must be in [0, 1]")
    return float(value)


def sparsity_schedule(step, final_sparsity, begin_step, end_step, initial_sparsity=0.0, frequency=1) -> float:
    """Target sparsity at training step `step` (cubic ramp from initial_sparsity to final_sparsity)."""
    step = _check_int("step", step)
    s_f = _check_fraction("final_sparsity", final_sparsity)
    s_i = _check_fraction("initial_sparsity", initial_sparsity)
    begin = _check_int("begin_step", begin_step, 0)
    end = _check_int("end_step", end_step, begin)
    dt = _check_int("frequency", frequency, 1)
    if step < begin:
        return s_i
    if step >= end:
        return s_f
    t = begin + (step - begin) // dt * dt
    return s_f + (s_i - s_f) * (1.0 - (t - begin) / (end - begin)) ** 3


def mask_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Zero the optimizer state (momentum, Adam moments) of every masked-out parameter entry.

    Without it a momentum buffer filled before a weight was pruned moves the weight off zero at the next step
    (the masked gradient is zero, the momentum is not). Uses the set_param_mask protocol, so it covers every
    pyopt sparse layer. pyopt.optim.FusedSGD does this itself inside its step.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            mask = get_param_mask(param)
            if mask is None:
                continue
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    value.masked_fill_(~mask, 0)


class GradualPruner:
    """Re-prune `model` at the scheduled sparsity as training goes; call .step() once per training step.

        pruner = GradualPruner(model, 0.9, begin_step=100, end_step=1000, frequency=50)
        for batch in data:
            loss.backward(); opt.step(); pruner.step()

    prune_kwargs go to pyopt.prune (method, scope, pattern (unstructured or block), include, exclude, generator).
    Each re-prune intersects with the current masks, so the pruned set only grows. The first prune swaps the
    layers for their masked twins (SparseLinear, SparseConvNd), which reuse the dense layers' Parameter objects,
    so an optimizer built before keeps working. `self.model` is the (possibly new) model.
    optimizer: if given, its state at newly pruned entries is zeroed after each prune (mask_optimizer_state),
    so momentum cannot move pruned weights off zero.
    """

    def __init__(
        self,
        model: nn.Module,
        final_amount,
        begin_step,
        end_step,
        frequency=1,
        initial_amount=0.0,
        optimizer=None,
        **prune_kwargs,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        pattern = M.parse_pattern(prune_kwargs.get("pattern", "unstructured"))
        if pattern.kind not in ("unstructured", "block"):
            raise ValueError(f"pattern='{pattern}': GradualPruner ramps unstructured or block sparsity only")
        sparsity_schedule(
            begin_step, final_amount, begin_step, end_step, initial_amount, frequency
        )  # validate
        self.model = model
        self.final_amount, self.initial_amount = final_amount, initial_amount
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
        self.optimizer = optimizer
        self.prune_kwargs = prune_kwargs
        self.step_count = 0
        self.applied: float | None = None  # the sparsity of the last prune, None before the first
        self.report = None

    def sparsity(self, step: int) -> float:
        return sparsity_schedule(
            step, self.final_amount, self.begin_step, self.end_step, self.initial_amount, self.frequency
        )

    def step(self, step: int | None = None):
        """Prune if `step` (default: the internal counter, which then advances) reaches a new target sparsity.

        Returns the prune Report when it pruned, else None.
        """
        if step is None:
            step, self.step_count = self.step_count, self.step_count + 1
        if step < self.begin_step:
            return None
        target = self.sparsity(step)
        if self.applied is not None and target == self.applied:
            return None
        self.model, self.report = prune(self.model, target, **self.prune_kwargs)
        self.applied = target
        if self.optimizer is not None:
            mask_optimizer_state(self.optimizer)
        return self.report
