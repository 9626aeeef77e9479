"""pyopt.prune_layers: remove whole residual blocks / transformer layers, replaced by pyopt.nn.IdentityBlock.

Candidates (blocks=None): the children of every nn.ModuleList / nn.Sequential whose children are two or more
non-leaf modules of one class (a ResNet stage's BasicBlocks, a BERT encoder's layers, a ViT's blocks); the
innermost level when such containers nest. blocks= selects candidates by name pattern / type instead
(pyopt/convert/select.py). A candidate is removable only if, on the calibration batches, its output is
a tensor (or a tuple whose first item is) of the same shape as its input hidden states (the first positional
argument): only then can the identity stand in. exclude= protects blocks.

Scores, measured on the calibration batches (one forward each, every block observed at once; lower = less
important, removed first):
    "angular"   (default) the angular distance arccos(cos(x_in, x_out)) / pi between a block's input and
                output hidden states, cosine over the feature dim of each position (the last dim of
                (batch, seq, hidden), dim 1 of (batch, channels, h, w), the last of (batch, features)),
                averaged over positions and batches — the "block influence" of layer-pruning papers
                (Gromov et al. 2024; Men et al. 2024, ShortGPT: 1 - cos).
    "magnitude" the mean |w| over the block's parameters.
n_or_amount: an int = number of blocks to remove, a float in [0, 1] = fraction of the removable ones
(round()). Returns (model, Report) with every candidate's score; the model is changed in place.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..convert.report import Report
from ..convert.select import Selector
from ..nn import IdentityBlock

METHODS = ("angular", "magnitude")


def _is_block(m: nn.Module) -> bool:
    return len(list(m.children())) > 0 or len(list(m.parameters(recurse=False))) > 0


def find_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the repeated blocks of `model` (see the module docstring)."""
    found = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)):
            continue
        kids = list(m.named_children())
        if len(kids) >= 2 and len({type(c) for _, c in kids}) == 1 and _is_block(kids[0][1]):
            found += [f"{name}.{k}" if name else k for k, _ in kids]
    return [n for n in found if not any(o.startswith(n + ".") for o in found)]  # innermost level


def _hidden(args, kwargs):
    if args and isinstance(args[0], torch.Tensor):
        return args[0], 0
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            return v, k
    return None, None


def _features(t: torch.Tensor) -> torch.Tensor:
    """(positions, features): the feature dim is dim 1 for 4-d and larger, the last dim otherwise."""
    t = t.detach().to(torch.float64)
    if t.dim() >= 4:
        t = t.movedim(1, -1)
    return t.reshape(-1, t.shape[-1]) if t.dim() >= 1 else t.reshape(1, 1)


class _Probe:
    def __init__(self, name: str, module: nn.Module):
        self.name, self.module = name, module
        self.total, self.count, self.why = 0.0, 0, ""
        self.output, self.extra, self.input = "tensor", 0, 0
        self.x = None

    def pre(self, module, args, kwargs):
        self.x, self.input = _hidden(args, kwargs)

    def post(self, module, args, kwargs, out):
        y = out
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            y, self.output, self.extra = out[0], "tuple", len(out) - 1
        elif not isinstance(out, torch.Tensor):
            self.why = f"returns a {type(out).__name__}, not a tensor or a tuple"
            return
        if self.x is None or self.x.shape != y.shape:
            shape = None if self.x is None else tuple(self.x.shape)
            self.why = f"changes the shape {shape} -> {tuple(y.shape)}: an identity cannot replace it"
            return
        a, b = _features(self.x), _features(y)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).clamp(-1, 1)
        self.total += float(torch.arccos(cos).sum() / math.pi)
        self.count += cos.numel()


def _call(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _magnitude(module: nn.Module) -> float:
    params = [p.detach() for p in module.parameters() if p.is_floating_point()]
    n = sum(p.numel() for p in params)
    return float(sum(p.double().abs().sum() for p in params) / n) if n else 0.0


def prune_layers(
    model: nn.Module, n_or_amount, calib_data, blocks=None, method: str = "angular", exclude=None
):
    """Remove the least important blocks of `model`; see the module docstring. Returns (model, Report)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(map(repr, METHODS))}")
    amount = n_or_amount
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"n_or_amount must be an int count or a float fraction, got {type(amount).__name__}")
    if (isinstance(amount, numbers.Integral) and amount < 0) or (
        not isinstance(amount, numbers.Integral) and not 0.0 <= amount <= 1.0
    ):
        raise ValueError(f"n_or_amount={amount!r}: an int must be >= 0, a float in [0, 1]")
    selector = Selector(None, exclude)
    if blocks is None:
        names = find_blocks(model)
    else:
        pick = Selector(blocks, None)
        names = [n for n, m in model.named_modules() if n and pick(n, m)]
    names = [n for n in names if selector(n, model.get_submodule(n))]
    if not names:
        raise ValueError(
            "prune_layers: no candidate block (no nn.ModuleList / nn.Sequential of repeated blocks; "
            "name them with blocks=[...])"
        )
    batches = list(calib_data) if calib_data is not None else []
    if not batches:
        raise ValueError("prune_layers: calib_data must hold at least one batch (tensor, tuple or dict)")
    probes = [_Probe(n, model.get_submodule(n)) for n in names]
    handles = []
    for p in probes:
        handles.append(p.module.register_forward_pre_hook(p.pre, with_kwargs=True))
        handles.append(p.module.register_forward_hook(p.post, with_kwargs=True))
    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                _call(model, batch)
    finally:
        for h in handles:
            h.remove()
        for m, mode in training.items():
            m.training = mode
    for p in probes:
        if not p.why and p.count == 0:
            p.why = "never called on the calibration batches"
    removable = [p for p in probes if not p.why]
    scores = {p.name: (p.total / p.count if method == "angular" else _magnitude(p.module)) for p in removable}
    k = amount if isinstance(amount, numbers.Integral) else round(amount * len(removable))
    if k > len(removable):
        raise ValueError(
            f"n_or_amount={amount!r}: only {len(removable)} of the {len(probes)} candidate blocks can be removed "
            + "; ".join(f"{p.name} {p.why}" for p in probes if p.why)[:300]
        )
    ranked = sorted(removable, key=lambda p: scores[p.name])  # stable: ties keep model order
    removed = {p.name for p in ranked[:k]}
    report = Report(f"prune_layers ({method})")
    for p in probes:
        if p.name in removed:
            parent, _, child = p.name.rpartition(".")
            new = IdentityBlock(p.output, p.extra, p.input, type(p.module).__name__)
            setattr(model.get_submodule(parent), child, new)
        score = scores.get(p.name, float("nan"))
        report.add(p.name, "removed" if p.name in removed else "kept", type=type(p.module).__name__,
                   score=score, reason=p.why)  # fmt: skip
    report.summary = {"candidates": len(probes), "removable": len(removable), "removed": len(removed)}
    return model, report
