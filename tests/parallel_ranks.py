"""What the 2 ranks of tests/test_parallel.py run, and the models they share with the single-process
references (importable by the spawned processes; not a test module).

`_worker` runs every scenario in one go — FSDP2 training, mixed precision, GradScaler, DCP resharding
2 -> 1 -> 2, tensor-parallel forwards of every layer kind, the MLP block, the examples, checkpoints of a
tensor-parallel model, the errors — and writes what each rank saw to rank{r}.pt.
"""

from __future__ import annotations

import datetime
import importlib.util
import time
import traceback
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

import pyopt
from pyopt.nn import BinaryLinear, Int8Conv2d, Int8Linear, SparseLinear, get_param_mask, set_param_mask
from pyopt.optim import FusedSGD

WORLD = 2
STEPS, BATCH = 4, 16
ROOT = Path(__file__).resolve().parents[1] / "examples"
TP_KINDS = (
    "int8-dynamic",
    "int8-weight-only",
    "binary",
    "binary-act",
    "masked",
    "dense",
    "csr",
    "csr_int8",
    "bsr",
)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ models, the same everywhere
def _linear(n_in, n_out, gen) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=gen) * 0.3)
        lin.bias.copy_(torch.randn(n_out, generator=gen))
    return lin


def tp_layer(kind: str, seed: int = 0) -> nn.Module:
    """One layer of each kind, odd sizes where the format allows (37 -> 29; binary: 48 input features so
    that the row-wise cut falls on a byte; bsr: 4x4 blocks, 40 -> 32)."""
    gen = torch.Generator().manual_seed(seed)
    if kind.startswith("int8"):
        return Int8Linear.from_float(
            _linear(37, 29, gen), "dynamic" if kind == "int8-dynamic" else "weight_only"
        )
    if kind.startswith("binary"):
        return BinaryLinear.from_float(_linear(48, 29, gen), binary_activations=kind == "binary-act")
    if kind == "bsr":
        blocks = torch.rand(8, 10, generator=gen) > 0.5
        mask = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)
        return SparseLinear.from_dense(_linear(40, 32, gen), mask).compress("bsr", block=(4, 4))
    layer = SparseLinear.from_dense(_linear(37, 29, gen), torch.rand(29, 37, generator=gen) > 0.6)
    if kind == "masked":
        return layer
    if kind == "csr_int8":
        return layer.compress("csr").quantize_int8()
    return layer.compress(kind)


def tp_input(layer: nn.Module) -> torch.Tensor:
    return torch.randn(2, 3, layer.in_features, generator=torch.Generator().manual_seed(11))


def mlp(seed: int = 0) -> nn.Sequential:
    """A pruned MLP block for tensor-parallel training: fc1 (colwise) -> ReLU -> fc2 (rowwise)."""
    gen = torch.Generator().manual_seed(seed)
    fc1 = SparseLinear.from_dense(_linear(16, 24, gen), torch.rand(24, 16, generator=gen) > 0.5)
    fc2 = SparseLinear.from_dense(_linear(24, 8, gen), torch.rand(8, 24, generator=gen) > 0.5)
    return nn.Sequential(OrderedDict(fc1=fc1, act=nn.ReLU(), fc2=fc2))


def mlp_batches():
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(6, 16, generator=gen), torch.randn(6, 8, generator=gen)) for _ in range(3)]


def train_mlp(model, batches):
    opt = FusedSGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for x, y in batches:
        opt.zero_grad()
        out = model(x)
        out = out.full_tensor() if hasattr(out, "full_tensor") else out
        nn.functional.mse_loss(out, y).backward()
        opt.step()
    return opt


def tp_model(seed: int = 0) -> nn.Sequential:
    """fc1 Int8Linear (colwise) -> ReLU -> fc2 csr SparseLinear (rowwise) -> fc3 masked SparseLinear."""
    gen = torch.Generator().manual_seed(seed)
    fc1 = Int8Linear.from_float(_linear(16, 24, gen))
    fc2 = SparseLinear.from_dense(_linear(24, 20, gen), torch.rand(20, 24, generator=gen) > 0.5).compress(
        "csr"
    )
    fc3 = SparseLinear.from_dense(_linear(20, 9, gen), torch.rand(9, 20, generator=gen) > 0.5)
    return nn.Sequential(OrderedDict(fc1=fc1, act=nn.ReLU(), fc2=fc2, fc3=fc3))


def tp_float_model() -> nn.Sequential:
    """The float architecture of tp_model (what pyopt.load converts)."""
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(16, 24), act=nn.ReLU(), fc2=nn.Linear(24, 20), fc3=nn.Linear(20, 9))
    )


def tp_plan(pp):
    return {
        "fc1": pp.ColwiseParallel(),
        "fc2": pp.RowwiseParallel(),
        "fc3": pp.ColwiseParallel(input_layouts=pp.styles.Replicate(), use_local_output=False),
    }


# ----------------------------------------------------------------------------------------------- the ranks
def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )  # fmt: skip
    res: dict = {}
    try:
        _scenarios(rank, Path(out_dir), res)
    except Exception:
        res["error"] = traceback.format_exc()
        raise
    finally:
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _scenarios(rank: int, out: Path, res: dict) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.debug import CommDebugMode
    from torch.utils._python_dispatch import TorchDispatchMode

    import pyopt.parallel as pp

    mesh = init_device_mesh("cpu", (WORLD,))
    solo = dist.new_group([0])  # rank 0 alone: the "1 process" of the resharding round trip
    ex = load_example("fsdp_train")
    t0 = time.perf_counter()

    # ---- FSDP2 + FusedSGD: training, masks, one fused call, DCP, one file
    model = ex.shard(ex.build_model(), mesh)
    per = BATCH // WORLD
    local = [
        (x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per])
        for x, y in ex.make_batches(STEPS + 3, BATCH)
    ]
    losses, opt, _ = ex.train(model, local[:STEPS], "cpu")
    res["fsdp_state"] = {k: _full(v) for k, v in model.state_dict().items()}
    res["fsdp_losses"] = losses
    res["fsdp_masks_intact"] = ex.masks_intact(model, opt)
    res["fsdp_local_shapes"] = [tuple(p.to_local().shape) for p in model.parameters()]

    class CountSGD(TorchDispatchMode):
        calls: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.pyopt.fused_sgd_.default:
                CountSGD.calls.append([type(t).__name__ for t in (*args[0], *args[1], *args[2])])
            return func(*args, **(kwargs or {}))

    x, y = local[STEPS]
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    with CommDebugMode() as comm, CountSGD():
        opt.step()
    res["fsdp_step_calls"] = CountSGD.calls
    res["fsdp_step_collectives"] = comm.get_total_counts()
    pp.save_checkpoint(out / "ckpt2", model, opt)
    pp.save(model, out / "fsdp.safetensors")
    ref_state = {k: _full(v) for k, v in model.state_dict().items()}
    res["saved_state"] = ref_state
    ref_bufs = [_full(opt.state[p]["momentum_buffer"]) for p in model.parameters()]
    dist.barrier()
    if rank == 0:  # 2 ranks -> 1: a plain (unsharded) model and optimizer, in one process
        plain = ex.build_model(seed=5)
        plain_opt = FusedSGD(plain.parameters(), **ex.OPTIM)
        pp.load_checkpoint(out / "ckpt2", plain, plain_opt, process_group=solo)
        res["one_rank_state_equal"] = all(torch.equal(v, ref_state[k]) for k, v in plain.state_dict().items())
        res["one_rank_bufs_equal"] = all(
            torch.equal(plain_opt.state[p]["momentum_buffer"], b)
            for p, b in zip(plain.parameters(), ref_bufs, strict=True)
        )
        res["one_rank_masks"] = all(get_param_mask(p) is not None for p in (plain[0].weight, plain[2].weight))
        pp.save_checkpoint(out / "ckpt1", plain, plain_opt, process_group=solo)
    dist.barrier()
    back = ex.shard(ex.build_model(seed=9), mesh)  # 1 -> 2 ranks, into a differently initialised model
    back_opt = FusedSGD(back.parameters(), **ex.OPTIM)
    pp.load_checkpoint(out / "ckpt1", back, back_opt)
    res["back_state_equal"] = all(torch.equal(_full(v), ref_state[k]) for k, v in back.state_dict().items())
    res["back_bufs_equal"] = all(
        torch.equal(_full(back_opt.state[p]["momentum_buffer"]), b)
        for p, b in zip(back.parameters(), ref_bufs, strict=True)
    )
    for m, o in ((model, opt), (back, back_opt)):  # both continue identically
        ex.train(m, local[STEPS + 1 :], "cpu", opt=o)
    res["continued_equal"] = all(
        torch.equal(_full(a), _full(b))
        for a, b in zip(model.state_dict().values(), back.state_dict().values(), strict=True)
    )
    res["continued_masks_intact"] = ex.masks_intact(back, back_opt)
    again = ex.shard(ex.build_model(seed=4), mesh)
    pp.load(again, out / "fsdp.safetensors")
    res["file_back_equal"] = all(torch.equal(_full(v), ref_state[k]) for k, v in again.state_dict().items())
    res["t_fsdp"] = time.perf_counter() - t0

    # ---- FSDP2 mixed precision: bf16 parameters for compute, float32 shards and reduction
    bf16 = ex.shard(ex.build_model(), mesh, bf16=True)
    _, bf16_opt, _ = ex.train(bf16, local[:STEPS], "cpu")
    res["bf16_state"] = {k: _full(v) for k, v in bf16.state_dict().items()}
    res["bf16_masks_intact"] = ex.masks_intact(bf16, bf16_opt)
    res["bf16_shard_dtypes"] = sorted({str(p.dtype) for p in bf16.parameters()})

    # ---- FSDP2 + GradScaler: an overflow in one rank's shard only skips the step on every rank
    amp = ex.shard(ex.build_model(), mesh)
    amp_opt = FusedSGD(amp.parameters(), **ex.OPTIM)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step, (x, y) in enumerate(local[:STEPS]):
        amp_opt.zero_grad()
        scaler.scale(nn.functional.mse_loss(amp(x), y)).backward()
        if step == 1 and rank == 1:
            amp[0].weight.grad.to_local()[0, 0] = float("inf")
        scaler.step(amp_opt)
        scaler.update()
    res["amp_state"] = {k: _full(v) for k, v in amp.state_dict().items()}
    res["amp_scale"] = scaler.get_scale()
    res["amp_grad"] = _full(amp[2].bias.grad)  # left unscaled, as torch.optim.SGD leaves it

    # ---- tensor parallel: every layer kind, column-wise and row-wise
    t1 = time.perf_counter()
    for kind in TP_KINDS:
        for style in ("colwise", "rowwise"):
            layer = tp_layer(kind)
            x = tp_input(layer)
            model = nn.Sequential(OrderedDict(fc=layer))
            if style == "colwise":
                plan = {"fc": pp.ColwiseParallel(use_local_output=False)}
            else:  # the full input, cut by the layer (input_layouts=Replicate: each rank takes its slice)
                plan = {"fc": pp.RowwiseParallel(input_layouts=Replicate(), use_local_output=False)}
            pp.parallelize_module(model, mesh, plan)
            with torch.no_grad():
                out_dt = model(x)
            res[f"tp/{kind}/{style}"] = out_dt.full_tensor()
            res[f"tp/{kind}/{style}/placement"] = str(out_dt.placements)

    # ---- the MLP block: one all-reduce in forward; training with FusedSGD
    block = pp.parallelize_module(mlp(), mesh, {"fc1": pp.ColwiseParallel(), "fc2": pp.RowwiseParallel()})
    xb = mlp_batches()[0][0].clone().requires_grad_()
    with CommDebugMode() as comm:
        yb = block(xb)
    res["mlp_forward_comms"] = {str(k): v for k, v in comm.get_comm_counts().items()}
    res["mlp_forward"] = yb.detach()
    with CommDebugMode() as comm:  # the input's grad: each rank's part (its columns of fc1), summed once
        yb.square().sum().backward()
    res["mlp_backward_comms"] = {str(k): v for k, v in comm.get_comm_counts().items()}
    res["mlp_input_grad"] = xb.grad
    block.zero_grad()
    with torch.no_grad(), CommDebugMode() as comm:  # inference: the all-reduce without DTensor's bookkeeping
        res["mlp_infer"] = block(xb)
    res["mlp_infer_comms"] = comm.get_total_counts()
    mlp_opt = train_mlp(block, mlp_batches())
    res["mlp_trained"] = {k: _full(v) for k, v in block.state_dict().items()}
    res["mlp_masks_intact"] = ex.masks_intact(block, mlp_opt)
    tp_ex = load_example("tp_infer")
    res["tp_example_int8"] = tp_ex.run_worker(rank, WORLD, None, "int8", d=32, hidden=64, batch=4, repeat=1)
    res["tp_example_csr"] = tp_ex.run_worker(rank, WORLD, None, "csr", d=32, hidden=64, batch=4, repeat=1)

    # ---- tensor-parallel checkpoints: 2 ranks -> 1 -> 2, and one file
    tpm = pp.parallelize_module(tp_model(), mesh, tp_plan(pp))
    xt = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y_tp = tpm(xt).full_tensor()
    res["tp_model_out"] = y_tp
    pp.save_checkpoint(out / "tp2", tpm)
    pp.save(tpm, out / "tp.safetensors")
    dist.barrier()
    if rank == 0:
        plain = tp_model(seed=5)
        pp.load_checkpoint(out / "tp2", plain, process_group=solo)
        res["tp_one_rank_state"] = plain.state_dict()
        pp.save_checkpoint(out / "tp1", plain, process_group=solo)
    dist.barrier()
    back = pp.parallelize_module(tp_model(seed=6), mesh, tp_plan(pp))  # other values, other nnz per rank
    pp.load_checkpoint(out / "tp1", back)
    with torch.no_grad():
        res["tp_back_equal"] = torch.equal(back(xt).full_tensor(), y_tp)
    again = pp.parallelize_module(tp_model(seed=8), mesh, tp_plan(pp))
    pp.load(again, out / "tp.safetensors")
    with torch.no_grad():
        res["tp_file_back_equal"] = torch.equal(again(xt).full_tensor(), y_tp)
    res["t_tp"] = time.perf_counter() - t1

    # ---- what cannot be sharded: errors naming the layer and the reason
    def error(model, plan, m=mesh):
        try:
            pp.parallelize_module(model, m, plan)
        except pp.ShardingError as e:
            return str(e)
        return "no error"

    gen = torch.Generator().manual_seed(0)
    bsr = SparseLinear.from_dense(_linear(12, 8, gen), torch.ones(8, 12, dtype=torch.bool)).compress(
        "bsr", block=(4, 4)
    )
    res["err_bsr"] = error(nn.Sequential(OrderedDict(head=bsr)), {"head": pp.RowwiseParallel()})
    binary = BinaryLinear.from_float(_linear(20, 8, gen))
    res["err_binary"] = error(nn.Sequential(OrderedDict(proj=binary)), {"proj": pp.RowwiseParallel()})
    conv = Int8Conv2d.from_float(nn.Conv2d(3, 4, 3))
    res["err_conv"] = error(nn.Sequential(OrderedDict(stem=conv)), {"stem": pp.ColwiseParallel()})
    res["err_missing"] = error(nn.Sequential(OrderedDict(a=nn.Linear(4, 4))), {"b": pp.ColwiseParallel()})
    twice = nn.Sequential(OrderedDict(fc=tp_layer("csr")))
    pp.parallelize_module(twice, mesh, {"fc": pp.ColwiseParallel()})
    res["err_twice"] = error(twice, {"fc": pp.RowwiseParallel()})
    mesh2d = init_device_mesh("cpu", (1, WORLD), mesh_dim_names=("dp", "tp"))
    res["err_mesh"] = error(
        nn.Sequential(OrderedDict(fc=tp_layer("csr"))), {"fc": pp.ColwiseParallel()}, mesh2d
    )
    res["ok_mesh_dim"] = error(
        nn.Sequential(OrderedDict(fc=tp_layer("csr"))), {"fc": pp.ColwiseParallel()}, mesh2d["tp"]
    )
    lin = _linear(6, 10, gen)  # a torch nn.Linear with a pruning mask: torch's style, the mask kept
    set_param_mask(lin.weight, torch.rand(10, 6, generator=gen) > 0.5)
    split = pp.parallelize_module(nn.Sequential(OrderedDict(fc=lin)), mesh, {"fc": pp.ColwiseParallel()})
    kept = get_param_mask(split.fc.weight)
    res["torch_linear_mask"] = [
        type(kept).__name__,
        tuple(kept.to_local().shape),
        tuple(split.fc.weight.to_local().shape),
    ]
    try:
        pyopt.save(tpm, out / "refused.safetensors")
        res["err_pyopt_save"] = "no error"
    except ValueError as e:
        res["err_pyopt_save"] = str(e)
