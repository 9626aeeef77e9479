"""Checkpoints of sharded models: torch.distributed.checkpoint (DCP), and one pyopt.save file.

DCP (`save_checkpoint` / `load_checkpoint`): every rank writes its own shards of the model and of the
optimizer state (FusedSGD's momentum buffers and master weights are DTensors sharded like their
parameters) and the checkpoint records their global layout, so it loads into another layout: saved by 2
ranks, loaded by 1 process (a plain model) and back. These are torch's `get_state_dict` / `set_state_dict`
+ `dcp.save` / `dcp.load`; the only addition is that placeholders whose size depends on the data (the
nnz of csr / bsr layers) take the checkpoint's sizes before loading.

One file (`save` / `load`): the sharded model gathered into the single-device state (rank 0 writes it,
in pyopt.save's format, so pyopt.load reads it into an unsharded model) and a pyopt.save file loaded
into an already sharded model of the same layers (each rank keeps its slices).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from ..io.serialization import read_state, save_state
from ..nn import SparseLinear
from ..nn.registry import MODULES
from .layouts import COMPRESSED, INDEX_BUFFERS
from .styles import tp_state


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer=None, process_group=None) -> None:
    """dcp.save of the model (and the optimizer's state) to the folder `path`; every rank of
    `process_group` (default: all) calls it. Without torch.distributed initialised: one process."""
    msd, osd = get_state_dict(model, optimizer or [])
    state = {"model": msd}
    if optimizer is not None:
        state["optim"] = osd
    dcp.save(state, checkpoint_id=os.fspath(path), process_group=process_group)


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer=None, process_group=None) -> None:
    """Load a save_checkpoint folder into `model` (and `optimizer`), in whatever layout they have now (any
    number of ranks, sharded or not)."""
    msd, osd = get_state_dict(model, optimizer or [])
    state = {"model": msd}
    if optimizer is not None:
        state["optim"] = osd
    _fit_to_checkpoint(state, path)
    dcp.load(state, checkpoint_id=os.fspath(path), process_group=process_group)
    _resize_compressed(model, state["model"])
    set_state_dict(
        model, optimizer or [], model_state_dict=state["model"], optim_state_dict=state.get("optim", {})
    )


def _fit_to_checkpoint(state: dict, path) -> None:
    """The index structures of compressed sparse layers (csr / bsr: crow_indices, col_indices, values)
    are sized by the data, so a model built afresh may hold another nnz than the checkpoint. DCP loads
    into preallocated tensors: give those placeholders the saved sizes (load_state_dict then fits the
    layer to them). Every other size must match, as DCP requires."""
    saved = dcp.FileSystemReader(os.fspath(path)).read_metadata().state_dict_metadata
    model = state["model"]
    for key, t in list(model.items()):
        if key.rpartition(".")[2] not in INDEX_BUFFERS or type(t) is not torch.Tensor:
            continue
        size = getattr(saved.get(f"model.{key}"), "size", None)
        if size is not None and t.shape != size:
            model[key] = torch.empty(size, dtype=t.dtype, device=t.device)


def _resize_compressed(model: nn.Module, state: dict) -> None:
    """An unsharded compressed sparse layer takes the loaded nnz (its buffers are sized by the data)."""
    for name, m in model.named_modules():
        if not isinstance(m, SparseLinear) or m.format not in COMPRESSED or tp_state(m) is not None:
            continue
        for buf in INDEX_BUFFERS:
            t = state.get(f"{name}.{buf}" if name else buf)
            if isinstance(t, torch.Tensor) and t.shape != m._buffers[buf].shape:
                m._buffers[buf] = torch.empty_like(t, device=m._buffers[buf].device)


def _configs(model: nn.Module, full: dict[str, torch.Tensor]) -> dict:
    """{name: {"type", "config"}} of the model's pyopt layers, with the single-device sizes (a split
    compressed layer holds only its rank's nnz)."""
    modules = {}
    for name, m in model.named_modules():
        if MODULES.get(type(m).__name__) is not type(m):
            continue
        cfg = dict(m.extra_config())
        values = full.get(f"{name}.values" if name else "values")
        if tp_state(m) is not None and "nnz" in cfg and values is not None:
            cfg["nnz"] = values.shape[0]
        modules[name] = {"type": type(m).__name__, "config": cfg}
    return modules


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """The (FSDP2- or tensor-parallel-) sharded `model` as one pyopt.save file: every rank calls it (the
    shards are gathered), rank 0 writes. pyopt.load reads the file into an unsharded model."""
    if not _distributed():
        full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
        save_state(full, _configs(model, full), path)
        return
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        save_state(full, _configs(model, full), path)
    dist.barrier()


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a pyopt.save file into a sharded `model` whose layers are already of the saved types (build
    it as it was saved: convert, then shard); each rank keeps its own slices. Returns `model`."""
    modules, tensors = read_state(path)
    for name, entry in modules.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            m = None
        if m is None or type(m).__name__ != entry.get("type"):
            got = "nothing" if m is None else type(m).__name__
            raise ValueError(
                f"pyopt.parallel.load: {os.fspath(path)}: layer {name!r} is {entry.get('type')} in the file "
                f"but {got} in the sharded model; load the file into the unsharded model with pyopt.load, "
                "then shard it"
            )
    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=True))
    return model
