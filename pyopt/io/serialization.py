"""pyopt.save / pyopt.load: a quantised / sparse model in one safetensors file, never pickle.

File = every tensor of model.state_dict() (int8 or packed weights, scales, masks, float parameters) +
the safetensors metadata (a str -> str dict) holding:
    format          "pyopt"
    format_version  FORMAT_VERSION
    modules         JSON {qualified name: {"type": class name, "config": module.extra_config()}} for every
                    submodule whose class is registered in pyopt.nn.registry.MODULES
    aliases         JSON {state_dict key: key it shares its tensor with} (tied weights are stored once)
    structure       (optional) JSON of the modules pruning resized or removed (pyopt/pruning/resize.py), so
                    that a fresh model of the original architecture is resized before loading
    sha256          hex digest over every other metadata field and (name, dtype, shape, bytes) of every stored
                    tensor, in key order, so an edited config, alias or tensor is detected (safetensors itself
                    checks only the header's offsets)

load(model, path) validates all of this first (pyopt/io/file_checks.py: header, configs, sizes against the
model before anything is allocated, checksum, sparse structure), swaps each listed submodule of `model` for
MODULES[type].from_config(config) (so a float model of the same architecture becomes the quantised one),
then load_state_dict(strict=True): the reloaded model's outputs are bit-identical. It is atomic: on any
error the model is left exactly as it was and the error is a ValueError naming the layer and the field.
Tensors that share storage without being the same view, and non-contiguous tensors, are written as
contiguous copies (safetensors requires contiguous, non-overlapping storage); values are unchanged.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

from ..nn.registry import MODULES
from ..pruning.resize import apply_structure, structure_of
from . import file_checks as fc

FORMAT = "pyopt"
# 2: the checksum covers the metadata too (1: tensors only; such files are refused: re-save them)
FORMAT_VERSION = "2"


def _storable(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors safetensors can write, aliases): identical views are stored once, other overlaps copied."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in state.items():
        t = t.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        view = (t.device, ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ptr and view in views:
            aliases[name] = views[view]
            continue
        owned = ptr and ptr not in storages and t.is_contiguous() and t.untyped_storage().nbytes() == t.nbytes
        tensors[name] = t.cpu() if owned else t.cpu().clone(memory_format=torch.contiguous_format)
        if ptr:
            views[view] = name
            storages.add(ptr)
    return tensors, aliases


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write `model` (its state_dict + the configs of its pyopt modules) to one safetensors file."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if os.path.isdir(path):
        raise ValueError(f"pyopt.save: path {os.fspath(path)!r} is a directory, not a file name")
    if any(t.is_meta for t in model.state_dict().values()):
        raise ValueError("pyopt.save: the model has tensors on the meta device (no data to save)")
    if _is_sharded(model):
        raise ValueError(
            "pyopt.save: the model is sharded (FSDP2 / tensor parallel): use pyopt.parallel.save(model, path), "
            "which gathers the shards (every rank calls it, rank 0 writes)"
        )
    modules = {
        name: {"type": type(m).__name__, "config": m.extra_config()}
        for name, m in model.named_modules()
        if MODULES.get(type(m).__name__) is type(m)
    }
    save_state(model.state_dict(), modules, path, structure_of(model))


def _is_sharded(model: nn.Module) -> bool:
    """DTensor parameters / buffers, or a layer split by pyopt.parallel (its own attribute)."""
    dt = sys.modules.get("torch.distributed.tensor")  # no DTensor exists unless torch imported it
    tensors = (*model.parameters(), *model.buffers())
    return (dt is not None and any(isinstance(t, dt.DTensor) for t in tensors)) or any(
        hasattr(m, "_pyopt_tp") for m in model.modules()
    )


def save_state(
    state: dict[str, torch.Tensor], modules: dict, path: str | os.PathLike, structure: dict | None = None
) -> None:
    """The file pyopt.save writes, from a state_dict, the {name: {"type", "config"}} of its pyopt modules
    (pyopt.parallel.save: the gathered state of a sharded model) and the resized modules' structure."""
    from safetensors.torch import save_file

    tensors, aliases = _storable(state)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pyopt_version": __import__("pyopt").__version__,
        "modules": json.dumps(modules, sort_keys=True),
        "aliases": json.dumps(aliases, sort_keys=True),
    }
    if structure:
        metadata["structure"] = json.dumps(structure, sort_keys=True)
    metadata["sha256"] = fc.digest(metadata, tensors)
    save_file(tensors, os.fspath(path), metadata=metadata)


def _header(path) -> tuple[dict, dict, dict, dict]:
    """(metadata, {name: (dtype, shape)}, modules, aliases) of a pyopt file, header checks done."""
    metadata, entries = fc.read_header(path)
    if metadata.get("format") != FORMAT:
        raise fc.bad(path, "not written by pyopt.save (no pyopt metadata header)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise fc.bad(
            path,
            f"format_version {metadata.get('format_version')!r} is not supported (this pyopt reads "
            f"{FORMAT_VERSION!r}; files of format 1 carry no checksum of their metadata: re-save them)",
        )
    modules, aliases = fc.parse_json(path, metadata, "modules"), fc.parse_json(path, metadata, "aliases")
    for name, target in aliases.items():
        if not isinstance(target, str) or target not in entries or name in entries:
            raise fc.bad(
                path, f"alias {name!r} -> {target!r} must name a tensor the file holds, under a new key"
            )
    return metadata, entries, modules, aliases


def _tensors(path, metadata: dict, aliases: dict) -> dict[str, torch.Tensor]:
    """Every tensor of the file, the checksum verified, tied tensors resolved."""
    tensors = fc.read_tensors(path)
    if fc.digest(metadata, tensors) != metadata.get("sha256"):
        raise fc.bad(path, "checksum mismatch: the metadata or tensor data were modified or corrupted")
    for name, target in aliases.items():
        tensors[name] = tensors[target]
    return tensors


def read_state(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(modules, tensors) of a pyopt.save file, validated as pyopt.load does (pyopt.parallel.load)."""
    metadata, _, modules, aliases = _header(path)
    return modules, _tensors(path, metadata, aliases)


def _device(module: nn.Module) -> torch.device:
    t = next(iter((*module.parameters(), *module.buffers())), None)
    return t.device if t is not None else torch.device("cpu")


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the module's float parameters (the model's precision), or None when it has none."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _target_dtype(old: nn.Module, name: str, entries: dict) -> torch.dtype | None:
    """The float dtype a swapped-in layer takes: that of the layer it replaces (a bf16 model stays bf16; int8
    scales stay float32, see nn.registry.keep_float32), or, replacing a layer without float parameters, that of
    its saved tensors. A file in another precision than the model then fails the state check."""
    dtype = _float_dtype(old)
    if dtype is not None:
        return dtype
    prefix = f"{name}."
    found = {dt for key, (dt, _) in entries.items() if key.startswith(prefix) and dt.is_floating_point}
    found.discard(torch.float32)
    return found.pop() if len(found) == 1 else None


def _plan(model: nn.Module, modules: dict, path, entries: dict) -> list[tuple]:
    """[(name, cls, config, meta module, dtype)] of the swaps the file asks for, every config checked and
    built on the meta device (nothing allocated). ValueError naming the layer otherwise."""
    plan = []
    for name, entry in sorted(modules.items(), key=lambda kv: kv[0].count(".")):  # parents first
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("type"), str)
            and isinstance(entry.get("config"), dict)
        ):
            raise fc.bad(path, f"module entry for {name!r} must be {{'type': str, 'config': dict}}")
        cls = MODULES.get(entry["type"])
        if cls is None:
            raise fc.bad(
                path,
                f"unknown module type {entry['type']!r} for {name!r} (registered: {sorted(MODULES)}); "
                "import the package that defines it first",
            )
        try:
            old = model.get_submodule(name)
        except AttributeError as e:
            raise fc.bad(
                path, f"the model has no submodule {name!r}: saved from another architecture?"
            ) from e
        try:
            fc.check_config(name, entry["type"], entry["config"])
            meta = fc.build_on_meta(name, cls, entry["config"])
        except ValueError as e:
            raise fc.bad(path, str(e)) from e
        if not name and not (type(old) is cls and old.extra_config() == meta.extra_config()):
            raise fc.bad(
                path, f"the model itself must be a {entry['type']} (the root module cannot be swapped)"
            )
        dtype = _target_dtype(old, name, entries)
        plan.append((name, cls, entry["config"], meta.to(dtype=dtype), dtype, old))
    return plan


def _expected_state(model: nn.Module, plan: list[tuple]) -> dict[str, tuple]:
    """{key: (dtype, shape)} of the model's state_dict as it will be after the planned swaps."""
    expected = {k: (t.dtype, tuple(t.shape)) for k, t in model.state_dict(keep_vars=True).items()}
    for name, _cls, _cfg, meta, _dtype, _old in plan:
        prefix = f"{name}." if name else ""
        expected = {k: v for k, v in expected.items() if not k.startswith(prefix)}
        expected |= {
            prefix + k: (t.dtype, tuple(t.shape)) for k, t in meta.state_dict(keep_vars=True).items()
        }
    return expected


def _swap(model: nn.Module, plan: list[tuple], undo: list) -> None:
    """Build the real modules (sizes verified against the file by now) and swap them in."""
    for name, cls, cfg, meta, dtype, old in plan:
        if type(old) is cls and old.extra_config() == meta.extra_config():
            continue
        new = cls.from_config(dict(cfg)).to(device=_device(old), dtype=dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        undo.append((parent, child, getattr(parent, child)))
        setattr(parent, child, new)


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Restore a file written by pyopt.save into `model` (a float or already-converted model of the same
    architecture); swaps submodules to the saved pyopt types, then loads every tensor. Returns `model`.

    Atomic: every check (pyopt/io/file_checks.py) runs before the model is touched; on any error the model is
    unchanged and the error is a ValueError naming the problem (the layer and field for a bad config)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(
            "pyopt.load: the model has tensors on the meta device; materialise it first "
            "(model.to_empty(device='cpu')) so that there is memory to load into"
        )
    metadata, entries, modules, aliases = _header(path)
    structure = fc.parse_json(path, metadata, "structure") if "structure" in metadata else None
    undo: list = []
    try:
        if structure:  # resize the fresh model's pruned modules first (shapes from the header: no data read)
            shapes = {k: torch.empty(shape, dtype=dt, device="meta") for k, (dt, shape) in entries.items()}
            apply_structure(model, structure, shapes, undo, skip=set(modules), bad=lambda m: fc.bad(path, m))
        plan = _plan(model, modules, path, entries)
        expected = _expected_state(model, plan)
        fc.check_state(path, expected, entries | {n: entries[t] for n, t in aliases.items()})
        tensors = _tensors(path, metadata, aliases)
        try:
            fc.check_contents({p[0]: p[3] for p in plan}, tensors)
        except ValueError as e:
            raise fc.bad(path, str(e)) from e
        _swap(model, plan, undo)
        model.load_state_dict(tensors, strict=True)
    except Exception as e:
        for parent, child, old in reversed(undo):  # leave the caller's model as it was
            setattr(parent, child, old)
        if isinstance(e, ValueError) and str(e).startswith("pyopt.load"):
            raise
        raise fc.bad(path, f"loading failed, the model is unchanged: {type(e).__name__}: {e}") from e
    return model
