"""Saving what got smaller: the shapes of channel-pruned modules, recorded, saved and re-applied on load.

Channel pruning (either path) calls record_shape(module) on every module whose shape it changed; the names
of the module's shape attributes (in_features, out_channels, groups, num_features, normalized_shape, a
pruned attention module's head count, ...) are kept on the module. pyopt.save writes structure_of(model)
into the file's metadata ("structure"); pyopt.load calls apply_structure on the fresh model first: each
recorded module is replaced by a copy with those attributes and empty tensors of the file's shapes, which
load_state_dict then fills. So a pruned model reloads into the architecture's factory, never rebuilt by
hand. Removed blocks need nothing here: an IdentityBlock is a registered pyopt module.

A recorded size may only shrink the fresh model's (pruning never widens a layer): anything else is a file
from another architecture, refused before any allocation.
"""

from __future__ import annotations

import copy
import numbers

import torch
from torch import nn

SHAPE_ATTR = "_pyopt_shape"  # the attribute names record_shape keeps on a module

_DEFAULT_ATTRS = (
    ((nn.Linear,), ("in_features", "out_features")),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
     ("in_channels", "out_channels", "groups")),
    ((nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm), ("num_features",)),
    ((nn.LayerNorm, nn.RMSNorm), ("normalized_shape",)),
    ((nn.GroupNorm,), ("num_groups", "num_channels")),
    ((nn.Embedding,), ("num_embeddings", "embedding_dim")),
    ((nn.PReLU,), ("num_parameters",)),
)  # fmt: skip


def shape_attrs(module: nn.Module) -> tuple[str, ...]:
    """The constructor attributes that fix the shapes of a torch layer's parameters."""
    for types, attrs in _DEFAULT_ATTRS:
        if isinstance(module, types):
            return attrs
    return ()


def record_shape(module: nn.Module, extra: tuple[str, ...] = ()) -> nn.Module:
    """Mark `module` as resized: pyopt.save records these attributes (its type's shape attributes + extra)."""
    names = set(getattr(module, SHAPE_ATTR, ())) | set(shape_attrs(module)) | set(extra)
    object.__setattr__(module, SHAPE_ATTR, tuple(sorted(names)))
    return module


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def structure_of(model: nn.Module) -> dict:
    """{qualified name: {"type": class name, "attrs": {name: value}}} of every recorded module."""
    out = {}
    for name, module in model.named_modules():
        names = getattr(module, SHAPE_ATTR, None)
        if names:
            out[name] = {
                "type": type(module).__name__,
                "attrs": {a: _jsonable(getattr(module, a)) for a in names if hasattr(module, a)},
            }
    return out


def _ints(value) -> list[int] | None:
    vals = value if isinstance(value, list) else [value]
    if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0 for v in vals):
        return [int(v) for v in vals]
    return None


def _shallow_copy(module: nn.Module) -> nn.Module:
    new = copy.copy(module)
    new.__dict__ = module.__dict__.copy()
    for d in ("_parameters", "_buffers", "_modules"):
        new.__dict__[d] = module.__dict__[d].copy()
    return new


def _resized(name: str, module: nn.Module, attrs: dict, tensors: dict, bad) -> nn.Module | None:
    """A copy of `module` with the saved attributes and empty tensors of the file's shapes (None: nothing
    to change)."""
    updates = {}
    for attr, value in attrs.items():
        current = getattr(module, attr, None)
        want, have = _ints(value), _ints(list(current) if isinstance(current, (tuple, list)) else current)
        if want is None or have is None or len(want) != len(have):
            raise bad(
                f"structure of {name!r}: attribute {attr!r} = {value!r} does not fit the model's {current!r}"
            )
        if any(w > h for w, h in zip(want, have, strict=True)):
            raise bad(f"structure of {name!r}: {attr}={value!r} is larger than the model's {current!r}")
        if want != have:
            updates[attr] = tuple(want) if isinstance(current, (tuple, list)) else want[0]
    resized = {}
    for kind in ("_parameters", "_buffers"):
        for attr, t in getattr(module, kind).items():
            key = f"{name}.{attr}" if name else attr
            if t is None or key not in tensors or tensors[key].shape == t.shape:
                continue
            shape = tuple(tensors[key].shape)
            if len(shape) != t.dim() or any(s > c for s, c in zip(shape, t.shape, strict=True)):
                raise bad(
                    f"{key!r} is {list(shape)} in the file but {list(t.shape)} in the model: a pruned layer can "
                    "only be smaller than the architecture it was pruned from"
                )
            resized[(kind, attr)] = shape
    if not updates and not resized:
        return None
    new = _shallow_copy(module)
    for attr, value in updates.items():
        setattr(new, attr, value)
    for (kind, attr), shape in resized.items():
        old = getattr(module, kind)[attr]
        empty = torch.empty(shape, dtype=old.dtype, device=old.device)
        getattr(new, kind)[attr] = nn.Parameter(empty, old.requires_grad) if kind == "_parameters" else empty
    return record_shape(new, tuple(attrs))


def apply_structure(model: nn.Module, structure: dict, tensors: dict, undo: list, skip=(), bad=ValueError):
    """Resize `model`'s recorded modules to the saved structure (pyopt.load, before its module swaps).

    Appends (parent, child name, old module) to `undo` per replaced module; modules named in `skip` (those
    the load swaps for registered pyopt types anyway) are left alone. bad(msg) builds the error to raise."""
    for name, entry in sorted(structure.items(), key=lambda kv: kv[0].count(".") if kv[0] else -1):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("type"), str)
            and isinstance(entry.get("attrs"), dict)
        ):
            raise bad(f"structure entry for {name!r} must be {{'type': str, 'attrs': dict}}")
        try:
            module = model.get_submodule(name)
        except AttributeError as e:
            raise bad(f"the model has no submodule {name!r}: saved from another architecture?") from e
        if type(module).__name__ != entry["type"]:
            if name in skip:
                continue
            raise bad(
                f"{name!r} was a {entry['type']} when saved but is a {type(module).__name__} in the model"
            )
        if name in skip:
            continue
        new = _resized(name, module, entry["attrs"], tensors, bad)
        if new is None:
            continue
        if not name:
            raise bad(
                "the model itself was resized: pass a model that contains it (the root cannot be replaced)"
            )
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, new)
        undo.append((parent, child, module))
