"""pyopt.prune(model, amount, pattern="channel", example_inputs=...): dependency-aware channel pruning.

1. Trace: torch.export on example_inputs (eval mode), then pyopt/pruning/depgraph.py couples every
   parameter dimension into channel groups (a ResNet stage's residual stream is one group, a depthwise conv
   joins its producer's group, an attention module's q/k/v/o heads are one group, an FFN's neurons another).
2. Choose: each prunable group loses round(amount * width) channels (heads for a heads group; an int amount
   is a count per group), the least important ones. Importance (default, method="magnitude"): for each
   channel, the sum over the group's weight parameters (Linear / Conv / Embedding weights, every dimension
   the group indexes: a producer's output rows and every consumer's input columns) of the Lp norm
   (channel_norm p = 1 or 2) of the slice that channel owns. importance=fn(group) -> tensor[group.size]
   replaces it (higher = kept); method="random" draws. Ties: torch.topk(largest=False) picks the removed.
3. Cut: every member tensor keeps the surviving indices (index_select), module attributes follow
   (in/out features, channels, conv groups, num_features, normalized_shape, an attention module's head
   count), the modules are marked for pyopt.save (pyopt/pruning/resize.py).
4. Check: the pruned model runs on example_inputs and its outputs keep their shapes; otherwise every change
   is rolled back and a ValueError names the module that failed.

Which groups are pruned: those with a producer (a layer's output channels), at least 2 channels, not
protected (model inputs and outputs, spatial dims, head_dim, ...), whose producers `include` selects and
`exclude` does not name (exclude protects a layer's output channels; for a norm layer, its channels), and,
unless allow_inexact=True, not renormalised (a LayerNorm / softmax / mean over the channels: removing a
channel changes the others' statistics, so the pruned model differs from the original even where the
removed channels were zero). A prunable group that touches a coupling the tracer cannot follow raises a
ValueError naming the module and op (exclude one of the group's layers to keep it).
"""

from __future__ import annotations

import dataclasses
import numbers

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..convert.report import Report
from ..convert.select import Selector
from . import masks as M
from .depgraph import DepGraph, trace
from .resize import SHAPE_ATTR, record_shape

_HEAD_COUNT = (
    "num_attention_heads",
    "num_heads",
    "n_heads",
    "n_head",
    "heads",
    "num_attention_heads_per_partition",
)
_HEAD_TOTAL = ("all_head_size", "inner_dim", "head_total", "attn_dim")


@dataclasses.dataclass
class GroupMember:
    name: str  # qualified parameter / buffer name
    dim: int
    tensor: torch.Tensor  # the parameter (or its importance_scores stand-in)
    channel: torch.Tensor  # for each index along `dim`: the group channel it belongs to, or -1
    is_param: bool


@dataclasses.dataclass
class Group:
    """One set of coupled channels; what importance= functions receive."""

    id: str
    size: int
    kind: str  # "heads" or "channels"
    producers: list[str]
    members: list[GroupMember]
    protected: list[str]
    unsafe: list[str]
    inexact: list[str]
    leaf: object = dataclasses.field(repr=False, default=None)
    kept: torch.Tensor | None = None  # after pruning: the kept channels (None: the group was not pruned)

    def magnitude(self, p: int = 1) -> torch.Tensor:
        """Per channel: sum over the weight members (dim >= 2) of the Lp norm of the channel's slice."""
        out = torch.zeros(self.size, dtype=torch.float64)
        weights = [
            m for m in self.members if m.is_param and m.tensor.dim() >= 2 and m.tensor.is_floating_point()
        ]
        for m in weights or [m for m in self.members if m.is_param and m.tensor.is_floating_point()]:
            t = m.tensor.detach().to(torch.float64).abs()
            per = t.pow(p).sum(dim=[d for d in range(t.dim()) if d != m.dim]) if t.dim() > 1 else t.pow(p)
            valid = m.channel >= 0
            acc = torch.zeros(self.size, dtype=torch.float64).index_add_(
                0, m.channel[valid], per.cpu()[valid]
            )
            out += acc.pow(1.0 / p)
        return out


def example_args(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs, got "
        f"{type(example_inputs).__name__}"
    )


def run_counted(model: nn.Module, args, kwargs):
    """(flat output tensors, multiply-accumulates) of one eval-mode forward without grad; modes restored."""
    from torch.utils.flop_counter import FlopCounterMode

    training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            out = model(*args, **kwargs)
    finally:
        for m, mode in training.items():
            m.training = mode
    leaves = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    return leaves, counter.get_total_flops() // 2


def build_groups(dg: DepGraph, model: nn.Module, importance_scores: dict) -> list[Group]:
    sp = dg.sp
    tensors = dict(model.named_parameters())
    params = set(tensors)
    tensors.update(dict(model.named_buffers()))
    by_leaf: dict[int, Group] = {}
    order = []
    for pr in dg.producers:
        for leaf in sp.leaves(pr.space):
            if leaf.uid not in by_leaf:
                kind = "heads" if leaf.heads else "channels"
                by_leaf[leaf.uid] = Group(
                    "", leaf.size, kind, [], [], leaf.protected, leaf.unsafe, leaf.inexact, leaf
                )
                order.append(leaf.uid)
            if pr.module not in by_leaf[leaf.uid].producers:
                by_leaf[leaf.uid].producers.append(pr.module)
    for m in dg.members:
        for leaf in sp.leaves(m.space):
            g = by_leaf.get(leaf.uid)
            if g is None or m.fqn not in tensors:
                continue
            layer = m.fqn.rpartition(".")[0]
            t = importance_scores.get(layer, tensors[m.fqn]) if m.fqn.endswith(".weight") else tensors[m.fqn]
            g.members.append(GroupMember(m.fqn, m.dim, t, sp.channel_map(m.space, leaf), m.fqn in params))
    groups = [by_leaf[u] for u in order]
    for i, g in enumerate(groups):
        g.id = f"g{i}"
    return groups


def channel_groups(model: nn.Module, example_inputs) -> list[Group]:
    """The coupled channel groups of `model` (traced on example_inputs), as pattern="channel" sees them; the
    model is not changed. Each Group lists its producers, its members (parameter / buffer, dim, channel map)
    and why it would not be pruned (protected / unsafe / inexact reasons)."""
    args, kwargs = example_args(example_inputs)
    return build_groups(DepGraph(model, trace(model, args, kwargs)), model, {})


def _status(g: Group, model, selector: Selector, include, allow_inexact: bool, producer_modules: set) -> str:
    """ "" if the group is pruned, else why not."""
    if g.size < 2:
        return "a single channel"
    if g.protected:
        return f"protected: {g.protected[0]}"
    member_modules = {m.name.rpartition(".")[0] for m in g.members}
    for name in list(g.producers) + sorted(member_modules - producer_modules):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if not selector(name, module) and (include is None or name in g.producers):
            return f"excluded ({name})"
    if g.inexact and not allow_inexact:
        return f"inexact, kept (allow_inexact=True prunes it): {g.inexact[0]}"
    return ""


def _keep(g: Group, amount, method, generator, norm, importance, round_to) -> torch.Tensor:
    k = M.count_to_prune(amount, g.size, f"channels of group {g.id} ({', '.join(g.producers[:2])})")
    if round_to and g.kind == "channels" and g.size >= round_to:
        kept = max(round_to, round((g.size - k) / round_to) * round_to)
        k = g.size - min(kept, g.size)
    if k >= g.size:
        raise ValueError(
            f"amount={amount!r} would remove all {g.size} channels of group {g.id} "
            f"({', '.join(g.producers[:3])}); at least one must remain"
        )
    keep = torch.ones(g.size, dtype=torch.bool)
    if k:
        if importance is not None:
            scores = torch.as_tensor(importance(g)).detach().reshape(-1).double().cpu()
            if scores.numel() != g.size:
                raise ValueError(f"importance({g.id}) returned {scores.numel()} scores for {g.size} channels")
        elif method == "random":
            scores = M.random_scores((g.size,), torch.float32, torch.device("cpu"), generator)
        else:
            scores = g.magnitude(norm)
        keep[torch.topk(scores, k, largest=(method == "random" and importance is None)).indices] = False
    return keep.nonzero().flatten()


class _Surgery:
    """Applies the kept indices to the model's tensors and attributes, and can undo all of it."""

    def __init__(self, model, dg, keep):
        self.model, self.dg, self.keep, self.saved, self.heads_done = model, dg, keep, {}, set()

    def size_after(self, space) -> int:
        idx = self.dg.sp.kept_index(space, self.keep)
        return self.dg.sp.find(space).size if idx is None else len(idx)

    def _save(self, module):
        if id(module) not in self.saved:
            attrs = {
                k: v
                for k, v in module.__dict__.items()
                if not k.startswith("_") and not isinstance(v, nn.Module)
            }
            attrs[SHAPE_ATTR] = module.__dict__.get(SHAPE_ATTR)
            self.saved[id(module)] = (module, dict(module._parameters), dict(module._buffers), attrs)

    def undo(self):
        for module, params, buffers, attrs in self.saved.values():
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
            for k, v in attrs.items():
                if v is None and k == SHAPE_ATTR:
                    module.__dict__.pop(SHAPE_ATTR, None)
                else:
                    module.__dict__[k] = v

    def apply(self):
        sp = self.dg.sp
        dims: dict[str, list] = {}
        for m in self.dg.members:
            dims.setdefault(m.fqn, []).append((m.dim, m.space))
        owners: dict[int, list] = {}
        for mname, module in self.model.named_modules(remove_duplicate=False):
            for kind in ("_parameters", "_buffers"):
                for attr, t in getattr(module, kind).items():
                    if t is not None:
                        owners.setdefault(id(t), []).append((mname, module, kind, attr))
        tensors = dict(self.model.named_parameters())
        tensors.update(dict(self.model.named_buffers()))
        touched: dict[str, nn.Module] = {}
        for fqn, pairs in dims.items():
            cuts = [(d, sp.kept_index(s, self.keep)) for d, s in pairs]
            cuts = [(d, i) for d, i in cuts if i is not None]
            if not cuts or fqn not in tensors:
                continue
            old = tensors[fqn]
            new = old.detach()
            for d, idx in cuts:
                new = new.index_select(d, idx.to(new.device))
            new = new.contiguous()
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            for mname, module, kind, attr in owners[id(old)]:
                self._save(module)
                getattr(module, kind)[attr] = new
                touched[mname] = module
        for rec in self.dg.records:  # conv groups first: _fix_attrs reads them
            if rec.kind == "groups":
                self._apply_record(rec)
        for mname, module in touched.items():
            self._fix_attrs(mname, module)
        for rec in self.dg.records:
            if rec.kind != "groups":
                self._apply_record(rec)

    def _fix_attrs(self, mname: str, module: nn.Module):
        w = module._parameters.get("weight")
        if isinstance(module, nn.Linear) and w is not None:
            module.in_features, module.out_features = w.shape[1], w.shape[0]
        elif isinstance(module, nn.modules.conv._ConvNd) and w is not None:
            g = module.groups
            if module.transposed:
                module.in_channels, module.out_channels = w.shape[0], w.shape[1] * g
            else:
                module.in_channels, module.out_channels = w.shape[1] * g, w.shape[0]
        elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            t = w if w is not None else module._buffers.get("running_mean")
            if t is not None:
                module.num_features = t.shape[0]
        elif isinstance(module, nn.Embedding) and w is not None:
            module.embedding_dim = w.shape[1]
        elif isinstance(module, nn.PReLU) and w is not None:
            module.num_parameters = w.shape[0]
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and w is not None:
            module.normalized_shape = tuple(w.shape)
        record_shape(module)

    def _apply_record(self, rec):
        try:
            module = self.model.get_submodule(rec.module)
        except AttributeError:
            return
        if rec.kind == "groups" and isinstance(module, nn.modules.conv._ConvNd):
            new = self.size_after(rec.spaces[0])
            if new != module.groups:
                self._save(module)
                module.groups = new
                module.in_channels, module.out_channels = module.weight.shape[1] * new, module.weight.shape[0]
                record_shape(module)
        elif rec.kind == "shape" and hasattr(module, "normalized_shape"):
            shape = tuple(self.size_after(s) for s in rec.spaces)
            if shape != tuple(module.normalized_shape):
                self._save(module)
                module.normalized_shape = shape
                record_shape(module)
        elif rec.kind == "heads":
            for space in rec.spaces:
                for leaf in self.dg.sp.leaves(space):
                    if leaf.uid in self.keep and (rec.module, leaf.uid) not in self.heads_done:
                        self.heads_done.add((rec.module, leaf.uid))  # eager attention records it twice
                        self._set_heads(module, leaf.size, len(self.keep[leaf.uid]))

    def _set_heads(self, module, old: int, new: int):
        changed = []
        for attr in _HEAD_COUNT + _HEAD_TOTAL:
            value = module.__dict__.get(attr)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                if attr in _HEAD_COUNT and value == old:
                    changed.append((attr, new))
                elif attr in _HEAD_TOTAL and value % old == 0:
                    changed.append((attr, value // old * new))
        if changed:
            self._save(module)
            for attr, value in changed:
                setattr(module, attr, value)
            record_shape(module, tuple(a for a, _ in changed))


def _checked_run(model, args, kwargs):
    """run_counted -> (None, "", outputs, macs), or on an exception (exception, name of the innermost module
    that was running, [], 0)."""
    names = {m: n for n, m in model.named_modules()}
    stack, handles = [], []

    def enter(mod, inp):
        stack.append(mod)

    def leave(mod, inp, out):
        stack.pop()

    for m in names:
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    try:
        return (None, "", *run_counted(model, args, kwargs))
    except Exception as e:  # noqa: BLE001 (reported with its module, then re-raised as ValueError)
        return e, names.get(stack[-1], "") if stack else "", [], 0
    finally:
        for h in handles:
            h.remove()


def prune_structured(model, amount, example_inputs, *, method="magnitude", include=None, exclude=None,
                     generator=None, norm=1, importance=None, round_to=None, allow_inexact=False,
                     importance_scores=None):  # fmt: skip
    """See the module docstring. Returns (model, Report); the model is changed in place."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if norm not in (1, 2):
        raise ValueError(f"channel_norm={norm!r}: expected 1 (L1) or 2 (L2)")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to={round_to!r}: expected a positive int or None")
    if importance is not None and not callable(importance):
        raise TypeError(f"importance must be a callable (group -> scores), got {type(importance).__name__}")
    args, kwargs = example_args(example_inputs)
    selector = Selector(include, exclude)
    layers = [
        (n, m) for n, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    scores = M.check_importance_scores(importance_scores, layers, "weight", method)
    before, macs_before = run_counted(model, args, kwargs)
    params_before = sum(p.numel() for p in model.parameters())
    dg = DepGraph(model, trace(model, args, kwargs))
    groups = build_groups(dg, model, scores)
    producer_modules = {p for g in groups for p in g.producers}
    status = {g.id: _status(g, model, selector, include, allow_inexact, producer_modules) for g in groups}
    unsafe = [g for g in groups if not status[g.id] and g.unsafe]
    if unsafe:
        lines = [f"group {g.id} ({', '.join(g.producers[:3])}): {g.unsafe[0]}" for g in unsafe[:3]]
        raise ValueError(
            "pattern='channel' cannot prune these channel groups safely (nothing was changed):\n  "
            + "\n  ".join(lines)
            + f"\nprotect them with exclude=[...] (e.g. exclude={[unsafe[0].producers[0]]!r})"
        )
    keep = {
        g.leaf.uid: _keep(g, amount, method, generator, norm, importance, round_to)
        for g in groups
        if not status[g.id]
    }
    keep = {uid: idx for uid, idx in keep.items() if len(idx) < dg.sp.all[uid].size}
    surgery = _Surgery(model, dg, keep)
    try:
        surgery.apply()
    except Exception:
        surgery.undo()
        raise
    error, where, after, macs_after = _checked_run(model, args, kwargs)
    if error is None and [t.shape for t in after] != [t.shape for t in before]:
        error = RuntimeError(
            f"output shapes changed: {[tuple(t.shape) for t in before]} -> {[tuple(t.shape) for t in after]}"
        )
    if error is not None:
        surgery.undo()
        raise ValueError(
            f"pattern='channel': the pruned model no longer runs on example_inputs, so nothing was changed: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            + (
                f" (in module '{where}', whose forward probably uses a width it computed before pruning; "
                f"exclude=[{where!r}] keeps its channels)"
                if where
                else ""
            )
        ) from error
    params_after = sum(p.numel() for p in model.parameters())
    report = Report("prune (channel, dependency groups)")
    report.groups = groups  # with .kept and each member's channel map; the tensors are released
    for g in groups:
        g.kept = keep.get(g.leaf.uid)
        for m in g.members:
            m.tensor = None
    for g in groups:
        after_w = len(keep[g.leaf.uid]) if g.leaf.uid in keep else g.size
        names = ", ".join(g.producers[:3]) + (f" (+{len(g.producers) - 3})" if len(g.producers) > 3 else "")
        report.add(
            names, "pruned" if g.leaf.uid in keep else "kept", group=g.id, kind=g.kind,
            width=f"{g.size}->{after_w}", exact="no" if g.inexact else "yes", reason=status[g.id],
        )  # fmt: skip
    report.summary = {
        "groups": len(groups),
        "pruned_groups": len(keep),
        "params_before": params_before,
        "params_after": params_after,
        "params_ratio": params_after / max(params_before, 1),
        "macs_before": macs_before,
        "macs_after": macs_after,
        "macs_ratio": macs_after / max(macs_before, 1),
    }
    return model, report
