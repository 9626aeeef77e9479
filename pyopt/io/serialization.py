"""pyopt.save / pyopt.load: a quantised / sparse model in one safetensors file, never pickle.

File = every tensor of model.state_dict() (int8 or packed weights, scales, masks, float parameters) +
the safetensors metadata (a str -> str dict) holding:
    format          "pyopt"
    format_version  FORMAT_VERSION
    modules         JSON {qualified name: {"type": class name, "config": module.extra_config()}} for every
                    submodule whose class is registered in pyopt.nn.registry.MODULES
    aliases         JSON {state_dict key: key it shares its tensor with} (tied weights are stored once)
    sha256          hex digest over (name, dtype, shape, bytes) of every stored tensor, in key order, so
                    edited tensor data is detected (safetensors itself checks only the header's offsets)

load(model, path) validates all of this first, swaps each listed submodule of `model` for
MODULES[type].from_config(config) (so a float model of the same architecture becomes the quantised one),
then load_state_dict(strict=True): the reloaded model's outputs are bit-identical.
Tensors that share storage without being the same view, and non-contiguous tensors, are written as
contiguous copies (safetensors requires contiguous, non-overlapping storage); values are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch
from torch import nn

from ..nn.registry import MODULES
from ..pruning.resize import apply_structure, structure_of

FORMAT = "pyopt"
FORMAT_VERSION = "1"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
    (pyopt.parallel.save: the gathered state of a sharded model) and the shapes of channel-pruned modules
    (pyopt/pruning/resize.py)."""
    from safetensors.torch import save_file

    tensors, aliases = _storable(state)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pyopt_version": __import__("pyopt").__version__,
        "modules": json.dumps(modules, sort_keys=True),
        "aliases": json.dumps(aliases, sort_keys=True),
        "sha256": _digest(tensors),
    }
    if structure:
        metadata["structure"] = json.dumps(structure, sort_keys=True)
    save_file(tensors, os.fspath(path), metadata=metadata)


def _bad(path, what: str) -> ValueError:
    return ValueError(f"pyopt.load: {os.fspath(path)}: {what}")


def _read(path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated / malformed files
        raise _bad(path, f"not a readable safetensors file (truncated or corrupted?): {e}") from e
    if not metadata or metadata.get("format") != FORMAT:
        raise _bad(path, "not written by pyopt.save (no pyopt metadata header)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise _bad(
            path,
            f"format_version {metadata.get('format_version')!r} is not supported (this pyopt "
            f"reads {FORMAT_VERSION!r})",
        )
    if _digest(tensors) != metadata.get("sha256"):
        raise _bad(path, "checksum mismatch: tensor data or names were modified or corrupted")
    return metadata, tensors


def _json(path, metadata: dict[str, str], key: str) -> dict:
    try:
        value = json.loads(metadata[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise _bad(path, f"metadata field {key!r} is missing or not valid JSON") from e
    if not isinstance(value, dict):
        raise _bad(path, f"metadata field {key!r} must be a JSON object")
    return value


def read_state(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(modules, tensors) of a pyopt.save file, validated as pyopt.load does, tied tensors resolved."""
    metadata, tensors = _read(path)
    modules, aliases = _json(path, metadata, "modules"), _json(path, metadata, "aliases")
    for name, target in aliases.items():
        if target not in tensors:
            raise _bad(path, f"alias {name!r} -> {target!r} names a tensor the file does not hold")
        tensors[name] = tensors[target]
    return modules, tensors


def _device(module: nn.Module) -> torch.device:
    t = next(iter((*module.parameters(), *module.buffers())), None)
    return t.device if t is not None else torch.device("cpu")


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the module's float parameters (the model's precision), or None when it has none."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _saved_float_dtype(name: str, tensors: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The low-precision float dtype of the tensors saved under `name`, or None (float32 or none at all)."""
    prefix = f"{name}."
    dtypes = {
        t.dtype
        for key, t in tensors.items()
        if key.startswith(prefix) and t.is_floating_point() and t.dtype != torch.float32
    }
    return dtypes.pop() if len(dtypes) == 1 else None  # mixed: left to _check_state's error


def _swap_modules(model: nn.Module, modules: dict, path, undo: list, tensors: dict) -> None:
    """Swap in the saved module types; appends (parent, child name, old module) to `undo` per swap."""
    for name, entry in sorted(modules.items(), key=lambda kv: kv[0].count(".")):  # parents first
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("type"), str)
            and isinstance(entry.get("config"), dict)
        ):
            raise _bad(path, f"module entry for {name!r} must be {{'type': str, 'config': dict}}")
        cls = MODULES.get(entry["type"])
        if cls is None:
            raise _bad(
                path,
                f"unknown module type {entry['type']!r} for {name!r} (registered: {sorted(MODULES)}); "
                "import the package that defines it first",
            )
        try:
            old = model.get_submodule(name)
        except AttributeError as e:
            raise _bad(path, f"the model has no submodule {name!r}: saved from another architecture?") from e
        if type(old) is cls and old.extra_config() == entry["config"]:
            continue
        if not name:
            raise _bad(
                path, f"the model itself must be a {entry['type']} (the root module cannot be swapped)"
            )
        try:
            new = cls.from_config(entry["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise _bad(path, f"invalid config for {name!r} ({entry['type']}): {e}") from e
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        # from_config builds float32 layers; the swapped-in layer takes the precision of the one it replaces
        # (a bf16 model stays bf16; int8 scales stay float32, see nn.registry.keep_float32), or, replacing a
        # layer without float parameters, that of its saved tensors. A file in another precision than the
        # model then fails _check_state, as it does for the model's plain layers.
        dtype = _float_dtype(old) or _saved_float_dtype(name, tensors)
        setattr(parent, child, new.to(device=_device(old), dtype=dtype))
        undo.append((parent, child, old))


def _check_state(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], path) -> None:
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise _bad(
            path,
            f"state does not match the model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}",
        )
    for key in sorted(tensors):
        t, want = tensors[key], expected[key]
        if t.shape != want.shape or t.dtype != want.dtype:
            raise _bad(
                path,
                f"{key!r} is {t.dtype}{list(t.shape)} in the file but {want.dtype}{list(want.shape)} "
                "in the model",
            )


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Restore a file written by pyopt.save into `model` (a float or already-converted model of the same
    architecture); swaps submodules to the saved pyopt types, then loads every tensor. Returns `model`."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(
            "pyopt.load: the model has tensors on the meta device; materialise it first "
            "(model.to_empty(device='cpu')) so that there is memory to load into"
        )
    modules, tensors = read_state(path)
    undo: list = []
    try:
        if "structure" in metadata:  # resize the fresh model's channel-pruned modules first
            structure = _json(path, metadata, "structure")
            apply_structure(model, structure, tensors, undo, skip=set(modules), bad=lambda m: _bad(path, m))
        _swap_modules(model, modules, path, undo, tensors)
        _check_state(model.state_dict(), tensors, path)
    except ValueError:
        for parent, child, old in reversed(undo):  # leave the caller's model as it was
            setattr(parent, child, old)
        raise
    model.load_state_dict(tensors, strict=True)
    return model
