"""Tensor-parallel styles for pyopt's layers, usable in torch's `parallelize_module` plans.

    from torch.distributed.tensor.parallel import parallelize_module
    from pyopt.parallel import ColwiseParallel, RowwiseParallel
    parallelize_module(model, mesh, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})

`ColwiseParallel` / `RowwiseParallel` take torch's arguments (input_layouts, output_layouts,
use_local_output) and mean what torch's do; a plain nn.Linear / nn.Embedding is handed to torch's own
style, a pyopt layer (Int8Linear, BinaryLinear, SparseLinear) is split by pyopt/parallel/layouts.py.
pyopt's kernels have no DTensor rules, so a split layer keeps its slices as DTensors (what state_dict,
torch.distributed.checkpoint and optimizers see) and runs its own forward on their local tensors:

  colwise  x (replicated) -> y_r = x W_r^T + b_r, the rank's output slice (DTensor Shard(-1)); in
           backward the input grads of the ranks are summed (all-reduce), as torch's ColwiseParallel does;
  rowwise  x_r (the rank's input slice, Shard(-1)) -> partial x_r W_r^T, one all-reduce, + b (once).

A colwise layer followed by a rowwise one (the MLP block) runs with one all-reduce in forward. The local
compressed index structures of csr / bsr layers are gathered into the global ones by state_dict() (so
torch.distributed.checkpoint and pyopt.parallel.save see the single-device layout; every rank must call
it, as DCP does) and re-split by load_state_dict().
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor import parallel as tp

from .._rules import get_param_mask, set_param_mask
from . import layouts
from .layouts import COLWISE, ROWWISE, ShardingError

TP_ATTR = "_pyopt_tp"  # the module's _TensorParallel state


def tp_state(module: nn.Module):
    return getattr(module, TP_ATTR, None)


class _TensorParallel:
    """The split of one pyopt layer and what its forward needs to run on local tensors."""

    def __init__(self, module: nn.Module, style, mesh, name: str | None):
        if mesh.ndim != 1:
            raise ShardingError(
                f"{layouts.describe(module, name)}: tensor parallelism needs a 1-D mesh (pass the tensor-"
                f"parallel dimension, e.g. mesh['tp']), got {mesh.ndim} dimensions"
            )
        try:
            self.plan = layouts.plan(module, style.kind, mesh.size(), mesh.get_local_rank())
        except ShardingError as e:
            raise ShardingError(f"{layouts.describe(module, name)}: {e}") from None
        self.mesh, self.style, self.desc = mesh, style, layouts.describe(module, name)
        self.in_features, self.out_features = module.in_features, module.out_features
        self.bounds_all = layouts.chunk_bounds(
            self.out_features if style.kind == COLWISE else self.in_features, mesh.size()
        )

    # --------------------------------------------------------------------------------------- sharding
    def shard(self, module: nn.Module, src_data_rank) -> None:
        p = self.plan
        if p.compressed:
            tensors = [getattr(module, n) for n in layouts.INDEX_BUFFERS]
            for n, t in zip(layouts.INDEX_BUFFERS, layouts.split_compressed(*tensors, p), strict=True):
                module._buffers[n] = t
        for name, placement in p.placements.items():
            t = getattr(module, name)
            dt = distribute_tensor(t.detach(), self.mesh, [placement], src_data_rank=src_data_rank)
            if name in module._parameters:
                module._parameters[name] = nn.Parameter(dt, requires_grad=t.requires_grad)
            else:
                module._buffers[name] = dt
        if isinstance(module, layouts.SparseLinear):
            module._semi = None
            if module.format == "masked":
                set_param_mask(module.weight, module.mask)  # both DTensors, laid out alike

    # ---------------------------------------------------------------------------------------- forward
    @contextlib.contextmanager
    def local_view(self, module: nn.Module):
        """The module's DTensors replaced by their local tensors (parameters through to_local, so that
        their grads reach the DTensor parameters), features by the local counts; restored on exit."""
        saved = {}
        for name in self.plan.placements:
            table = module._parameters if name in module._parameters else module._buffers
            saved[name] = (table, table[name])
            if name == "bias" and self.plan.bias_after_reduce:
                table[name] = None  # added once, after the reduction
            else:
                table[name] = table[name].to_local()
        module.in_features, module.out_features = self.plan.in_local, self.plan.out_local
        try:
            yield
        finally:
            for name, (table, t) in saved.items():
                table[name] = t
            module.in_features, module.out_features = self.in_features, self.out_features

    def local_input(self, x):
        style, mesh = self.style, self.mesh
        if self.plan.style == COLWISE:
            if not isinstance(x, DTensor) and style.input_layout == Replicate() and not _needs_grad(x):
                return x  # inference: nothing to sum in backward, no DTensor bookkeeping
            if not isinstance(x, DTensor):
                x = DTensor.from_local(x, mesh, [style.input_layout], run_check=False)
            if x.placements != (Replicate(),):
                x = x.redistribute(placements=[Replicate()])
            # each rank's input grad covers its own output columns: summed across ranks in backward
            return x.to_local(grad_placements=[Partial()])
        if not isinstance(x, DTensor) and style.input_layout == Shard(-1):
            local = x  # already this rank's slice (e.g. a colwise layer's local output)
        else:
            if not isinstance(x, DTensor):
                x = DTensor.from_local(x, mesh, [style.input_layout], run_check=False)
            local = x.redistribute(placements=[Shard(x.ndim - 1)]).to_local()
        if local.dim() == 0 or local.shape[-1] != self.plan.in_local:
            raise ValueError(
                f"{self.desc}: expects this rank's slice of the input features "
                f"({self.plan.in_local} of {self.in_features}), got shape {tuple(local.shape)}"
            )
        return local

    def output(self, y: torch.Tensor, module: nn.Module):
        style, mesh = self.style, self.mesh
        if self.plan.style == COLWISE:
            if style.use_local_output and style.output_layout in (Shard(-1), Shard(y.ndim - 1)):
                return y
            shape = (*y.shape[:-1], self.out_features)
            out = DTensor.from_local(
                y, mesh, [Shard(y.ndim - 1)], run_check=False, shape=torch.Size(shape), stride=_strides(shape)
            )
        else:
            if style.use_local_output and style.output_layout == Replicate() and not _needs_grad(y):
                # inference: one in-place all-reduce (DTensor's redistribute costs ~2 ms more per call
                # in Python on the 2-core dev machine, more than gloo's all-reduce itself)
                dist.all_reduce(y, group=mesh.get_group())
                if self.plan.bias_after_reduce:
                    y = y + module.bias.to_local().to(y.dtype)
                return y
            out = DTensor.from_local(y, mesh, [Partial()], run_check=False).redistribute(
                placements=[Replicate()]
            )
            if self.plan.bias_after_reduce:
                local = out.to_local() + module.bias.to_local().to(y.dtype)
                out = DTensor.from_local(local, mesh, [Replicate()], run_check=False)
        layout = style.output_layout
        if layout == Shard(-1):
            layout = Shard(out.ndim - 1)
        if out.placements != (layout,):
            out = out.redistribute(placements=[layout])
        return out.to_local() if style.use_local_output else out

    # ------------------------------------------------------------------------------------- state dict
    def gather_compressed(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The global index structures from every rank's local ones (one all_gather per tensor)."""
        group = self.mesh.get_group()
        mine = [getattr(module, n) for n in layouts.INDEX_BUFFERS]
        per_rank = [_all_gather_varlen(t, group) for t in mine]
        pieces = list(zip(*per_rank, strict=True))
        return layouts.merge_compressed(pieces, self.plan, self.bounds_all)


def _needs_grad(t: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


def _strides(shape) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def _all_gather_varlen(t: torch.Tensor, group) -> list[torch.Tensor]:
    """all_gather of tensors whose first dimension differs per rank (padded to the longest; sent as bytes,
    since gloo has no int16)."""
    world = dist.get_world_size(group)
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    longest = int(max(int(s) for s in sizes))
    rows = t.reshape(t.shape[0], -1).contiguous().view(torch.uint8)
    padded = torch.zeros((longest, rows.shape[1]), dtype=torch.uint8, device=t.device)
    padded[: t.shape[0]] = rows
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    return [o[: int(s)].view(t.dtype).reshape(int(s), *t.shape[1:]) for o, s in zip(out, sizes, strict=True)]


def _state_dict_hook(module, state_dict, prefix, local_metadata):
    """state_dict(): the global index structures of a compressed layer (collective: every rank calls)."""
    st = tp_state(module)
    if st is None or not st.plan.compressed:
        return
    for name, t in zip(layouts.INDEX_BUFFERS, st.gather_compressed(module), strict=True):
        state_dict[prefix + name] = t


def _load_pre_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """load_state_dict(): global tensors (a single-device checkpoint, a pyopt file, a gathered state) are
    cut to this rank's slices; DTensors are taken as they are."""
    st = tp_state(module)
    if st is None:
        return
    p = st.plan
    if p.compressed and all(prefix + n in state_dict for n in layouts.INDEX_BUFFERS):
        full = [state_dict[prefix + n] for n in layouts.INDEX_BUFFERS]
        if not any(isinstance(t, DTensor) for t in full):
            for n, t in zip(layouts.INDEX_BUFFERS, layouts.split_compressed(*full, p), strict=True):
                module._buffers[n] = torch.empty_like(t, device=module._buffers[n].device)
                state_dict[prefix + n] = t
    for name, placement in p.placements.items():
        key = prefix + name
        t = state_dict.get(key)
        if isinstance(t, torch.Tensor) and not isinstance(t, DTensor):
            state_dict[key] = distribute_tensor(t, st.mesh, [placement], src_data_rank=None)


def _tp_forward(module: nn.Module, x, *args, **kwargs):
    """The forward of a split layer: its class's own forward on the local tensors, between the input
    and output layouts of its style."""
    st = tp_state(module)
    local = st.local_input(x)
    with st.local_view(module):
        y = type(module).forward(module, local, *args, **kwargs)
    return st.output(y, module)


class _PyoptStyle(tp.ParallelStyle):
    kind: str
    torch_style: type

    def __init__(self, *, input_layouts=None, output_layouts=None, use_local_output: bool = True, name=None):
        super().__init__()
        default_in, default_out = (
            (Replicate(), Shard(-1)) if self.kind == COLWISE else (Shard(-1), Replicate())
        )
        self.input_layout = input_layouts or default_in
        self.output_layout = output_layouts or default_out
        self.use_local_output = use_local_output
        self.name = name  # the layer's name in error messages (set by pyopt.parallel.parallelize_module)

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        if type(module) in (nn.Linear, nn.Embedding):  # torch's own layers: torch's own style
            style = self.torch_style(
                input_layouts=self.input_layout,
                output_layouts=self.output_layout,
                use_local_output=self.use_local_output,
            )
            style.src_data_rank = self.src_data_rank
            masks = {n: get_param_mask(p) for n, p in module.named_parameters(recurse=False)}
            module = style._apply(module, device_mesh)
            for n, mask in masks.items():  # torch's style replaces the parameters: keep their masks
                if mask is not None:
                    set_param_mask(module._parameters[n], mask)
            return module
        if tp_state(module) is not None:
            raise ShardingError(
                f"{layouts.describe(module, self.name)}: already split for tensor parallelism"
            )
        st = _TensorParallel(module, self, device_mesh, self.name)
        st.shard(module, self.src_data_rank)
        setattr(module, TP_ATTR, st)
        # a bound method (not a closure), so that a deepcopy of the module runs its own tensors
        module.forward = types.MethodType(_tp_forward, module)
        module.register_state_dict_post_hook(_state_dict_hook)
        module.register_load_state_dict_pre_hook(_load_pre_hook)
        return module

    def __repr__(self) -> str:
        return (
            f"pyopt.parallel.{type(self).__name__}(input_layouts={self.input_layout}, "
            f"output_layouts={self.output_layout}, use_local_output={self.use_local_output})"
        )


class ColwiseParallel(_PyoptStyle):
    """Split the output features (out_features) of a pyopt layer or an nn.Linear across the mesh."""

    kind = COLWISE
    torch_style = tp.ColwiseParallel


class RowwiseParallel(_PyoptStyle):
    """Split the input features (in_features) of a pyopt layer or an nn.Linear across the mesh; the
    partial outputs are summed with one all-reduce and the bias added once."""

    kind = ROWWISE
    torch_style = tp.RowwiseParallel


def parallelize_module(module: nn.Module, device_mesh, plan: dict) -> nn.Module:
    """torch's parallelize_module with pyopt's styles naming the layer in their errors. `plan` maps
    submodule names (fnmatch patterns, as torch's) to styles."""
    import fnmatch

    names = dict(module.named_modules())
    for pattern, style in plan.items():
        matched = [n for n in names if n and fnmatch.fnmatchcase(n, pattern)] or (
            [pattern] if pattern in names else []
        )
        if not matched:
            raise ShardingError(f"the plan names {pattern!r}, which matches no submodule of the model")
        for name in matched:
            if isinstance(style, _PyoptStyle):
                named = type(style)(
                    input_layouts=style.input_layout,
                    output_layouts=style.output_layout,
                    use_local_output=style.use_local_output,
                    name=name,
                )
                named.src_data_rank = style.src_data_rank
                style = named
            tp.parallelize_module(names[name], device_mesh, style)
    return module
