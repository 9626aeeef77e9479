"""Model parallelism with pyopt's layers and FusedSGD: 2 gloo ranks on CPU, spawned once for every test.

The ranks run every scenario in one go (`_worker`: FSDP2 training, mixed precision, DCP resharding
2 -> 1 -> 2, tensor-parallel forwards of every layer kind, the MLP block, errors) and write what they saw;
each test below checks one part of it against single-process runs computed here. Multi-GPU (nccl) is the
same code on another backend and is not run here.
"""

from __future__ import annotations

import datetime
import importlib.util
import socket
import time
import traceback
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import pyopt
from pyopt.nn import BinaryLinear, Int8Conv2d, Int8Linear, SparseLinear, get_param_mask, set_param_mask
from pyopt.optim import FusedSGD
from tests.tolerances import FP32_REORDERED, tol

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run the 2 ranks once; every test reads what they wrote."""
    out = tmp_path_factory.mktemp("parallel")
    ctx = mp.start_processes(
        _worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError("the 2 ranks did not finish in 240 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    results = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return results, out


# --------------------------------------------------------------------------------------------------- FSDP2
def _single_fsdp_run():
    ex = load_example("fsdp_train")
    model = ex.build_model()
    _, opt, _ = ex.train(model, ex.make_batches(STEPS + 3, BATCH)[:STEPS], "cpu")
    return ex, model, opt


def test_fsdp_matches_single_process(ranks):
    results, _ = ranks
    ex, single, opt = _single_fsdp_run()
    assert ex.masks_intact(single, opt)
    for r in results:
        assert r["fsdp_masks_intact"], "a pruned weight or its momentum is not zero on some rank"
        for key, value in single.state_dict().items():
            # Same maths; the grads are two half-batch means averaged (reduce-scatter) instead of one mean.
            torch.testing.assert_close(r["fsdp_state"][key], value, **tol(torch.float32))
        for name, p in single.named_parameters():
            mask = get_param_mask(p)
            if mask is not None:
                assert (r["fsdp_state"][name][~mask] == 0).all()
    # each rank holds its own half of every parameter (torch.chunk sizes: 64 rows -> 32 + 32, 4 -> 2 + 2)
    shapes = [r["fsdp_local_shapes"] for r in results]
    full = [tuple(p.shape) for p in single.parameters()]
    assert [s[0] for s in shapes[0]] != [f[0] for f in full]
    assert all(a[0] + b[0] == f[0] for a, b, f in zip(shapes[0], shapes[1], full, strict=True))


def test_fsdp_step_is_one_fused_call_on_local_shards(ranks):
    results, _ = ranks
    for r in results:
        assert len(r["fsdp_step_calls"]) == 1, "one fused call per parameter group"
        assert set(r["fsdp_step_calls"][0]) == {"Tensor"}, "the kernel gets local shards, not DTensors"
        assert r["fsdp_step_collectives"] == 0, "the optimizer step communicates nothing"


def test_fsdp_mixed_precision(ranks):
    results, _ = ranks
    _, single, _ = _single_fsdp_run()
    for r in results:
        assert r["bf16_masks_intact"]
        assert r["bf16_shard_dtypes"] == ["torch.float32"]  # the shards FusedSGD steps stay float32
        for key, value in single.state_dict().items():
            # forward/backward in bf16 (8-bit mantissa), grads reduced and stepped in float32
            torch.testing.assert_close(r["bf16_state"][key].float(), value.float(), **tol(torch.bfloat16))


def test_fsdp_grad_scaler(ranks):
    """GradScaler over sharded grads: torch reduces found_inf across the ranks, so an overflow in rank 1's
    shard skips the step on both; FusedSGD leaves the grads unscaled. Against one process with the same
    overflow (its step skipped too)."""
    results, _ = ranks
    ex = load_example("fsdp_train")
    model = ex.build_model()
    opt = FusedSGD(model.parameters(), **ex.OPTIM)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for step, (x, y) in enumerate(ex.make_batches(STEPS + 3, BATCH)[:STEPS]):
        opt.zero_grad()
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        if step == 1:
            model[0].weight.grad[-1, -1] = float("inf")
        scaler.step(opt)
        scaler.update()
    for r in results:
        assert r["amp_scale"] == scaler.get_scale() == 2.0**10 * 0.5  # one backoff, no growth yet
        for key, value in model.state_dict().items():
            torch.testing.assert_close(r["amp_state"][key], value, **tol(torch.float32))
        torch.testing.assert_close(r["amp_grad"], model[2].bias.grad, **tol(torch.float32))


def test_dcp_resharding_round_trip(ranks):
    results, _ = ranks
    r0 = results[0]
    assert r0["one_rank_state_equal"] and r0["one_rank_bufs_equal"], "2 ranks -> 1 process"
    assert r0["one_rank_masks"], "the loaded SparseLinear layers keep their masks for FusedSGD"
    for r in results:
        assert r["back_state_equal"] and r["back_bufs_equal"], "1 process -> 2 ranks"
        assert r["continued_equal"] and r["continued_masks_intact"], "training continues identically"


def test_sharded_model_to_one_file_and_back(ranks):
    results, out = ranks
    ex = load_example("fsdp_train")
    fresh = ex.build_model(seed=3)
    pyopt.load(fresh, out / "fsdp.safetensors")  # an ordinary pyopt file, read by one process
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, results[0]["saved_state"][key]), key
    assert all(r["file_back_equal"] for r in results), "the file loaded back into a sharded model"


# ----------------------------------------------------------------------------------------- tensor parallel
def _rowwise_emulation(layer, x):
    """A row-wise split computed in one process from its definition: each rank's slice of the input
    features through the layer's own kernel (its activations quantised on that slice alone), summed in rank
    order, plus the bias once."""
    k = layer.in_features
    size = -(-k // WORLD)
    total = 0
    for r in range(WORLD):
        k0, k1 = min(r * size, k), min((r + 1) * size, k)
        xr = x[..., k0:k1]
        if isinstance(layer, Int8Linear):
            op = (
                torch.ops.pyopt.int8_linear_dynamic
                if layer.mode == "dynamic"
                else torch.ops.pyopt.int8_linear_weight_only
            )
            part = op(xr, layer.weight[:, k0:k1].contiguous(), layer.weight_scales, None)
        else:
            packed = layer.packed_weight[:, k0 // 8 : -(-k1 // 8)].contiguous()
            part = torch.ops.pyopt.binary_linear(
                xr, packed, layer.alpha, None, k1 - k0, layer.binary_activations
            )
        total = total + part
    return total + layer.bias


def _dense_weight(layer) -> torch.Tensor:
    """The float64 weight a layer computes with (int8: dequantised; binary: alpha * sign)."""
    if isinstance(layer, Int8Linear):
        return layer.weight.double() * layer.weight_scales.double()[:, None]
    if isinstance(layer, BinaryLinear):
        return layer.dequantized_weight().double()
    from pyopt._rules import dequantize_csr_int8

    fmt = layer.format
    if fmt in ("masked", "dense"):
        return (layer.weight * layer.mask if fmt == "masked" else layer.weight).double()
    w = torch.zeros(layer.out_features, layer.in_features, dtype=torch.float64)
    if fmt == "bsr":
        bh, bw = layer.block
        rows = torch.repeat_interleave(torch.arange(len(layer.crow_indices) - 1), layer.crow_indices.diff())
        for i, (br, bc) in enumerate(zip(rows.tolist(), layer.col_indices.tolist(), strict=True)):
            w[br * bh : (br + 1) * bh, bc * bw : (bc + 1) * bw] = layer.values[i].double()
        return w
    rows = torch.repeat_interleave(torch.arange(layer.out_features), layer.crow_indices.diff())
    vals = (
        dequantize_csr_int8(layer.crow_indices, layer.values, layer.row_scales)
        if fmt == "csr_int8"
        else layer.values
    )
    w[rows, layer.col_indices.long()] = vals.double()
    return w


@pytest.mark.parametrize("kind", TP_KINDS)
def test_tp_colwise_equals_single_process(ranks, kind):
    """Each rank computes whole output features from the same operands: bit for bit, except where the
    kernel's rounding depends on how many output columns it gets — torch's float32 GEMM (format "dense")
    picks its blocking by shape, and the AVX2 int8 epilogue rounds its column tail differently from its
    vector body (1 ulp; the VNNI kernel is bit-exact, tests/test_int8_linear.py) — there within the
    float32 tolerance."""
    results, _ = ranks
    layer = tp_layer(kind)
    x = tp_input(layer)
    with torch.no_grad():
        want = layer(x)
    for r in results:
        assert r[f"tp/{kind}/colwise/placement"] == "(Shard(dim=2),)"
        got = r[f"tp/{kind}/colwise"]
        if kind in ("dense", "int8-dynamic"):
            torch.testing.assert_close(got, want, **tol(torch.float32))
        else:
            assert torch.equal(got, want), (got - want).abs().max()


@pytest.mark.parametrize("kind", TP_KINDS)
def test_tp_rowwise_equals_single_process(ranks, kind):
    results, _ = ranks
    layer = tp_layer(kind)
    x = tp_input(layer)
    with torch.no_grad():
        want = layer(x)
    for r in results:
        assert r[f"tp/{kind}/rowwise/placement"] == "(Replicate(),)"
        got = r[f"tp/{kind}/rowwise"]
        if kind in ("int8-dynamic", "binary-act"):
            # Activations are quantised per rank, on the rank's slice of the features: bit-exact with that
            # computation done in one process, and at least as close to the float result as one
            # quantisation of the whole row (a slice's max |x| is at most the row's).
            with torch.no_grad():
                assert torch.equal(got, _rowwise_emulation(layer, x))
            exact = x.double() @ _dense_weight(layer).T + layer.bias.double()
            assert (got.double() - exact).abs().max() <= 1.05 * (want.double() - exact).abs().max() + 1e-5
        elif kind in ("int8-weight-only", "binary"):
            with torch.no_grad():
                assert torch.equal(got, _rowwise_emulation(layer, x))
            torch.testing.assert_close(got, want, **FP32_REORDERED)
        else:
            # float32 partial sums over each half of the features, then added: a reordered sum
            torch.testing.assert_close(got, want, **FP32_REORDERED)
            exact = x.double() @ _dense_weight(layer).T + layer.bias.double()
            torch.testing.assert_close(got.double(), exact, **tol(torch.float32))


def test_tp_mlp_block_one_all_reduce_and_training(ranks):
    results, _ = ranks
    single = mlp()
    x = mlp_batches()[0][0].clone().requires_grad_()
    want = single(x)
    want.square().sum().backward()
    single.zero_grad()
    opt = train_mlp(single, mlp_batches())
    for r in results:
        assert r["mlp_forward_comms"] == {"c10d_functional.all_reduce": 1}, r["mlp_forward_comms"]
        torch.testing.assert_close(r["mlp_forward"], want.detach(), **FP32_REORDERED)
        assert r["mlp_backward_comms"] == {"c10d_functional.all_reduce": 1}, r["mlp_backward_comms"]
        torch.testing.assert_close(r["mlp_input_grad"], x.grad, **FP32_REORDERED)
        assert r["mlp_masks_intact"]
        for key, value in single.state_dict().items():
            torch.testing.assert_close(r["mlp_trained"][key], value, **FP32_REORDERED)
    assert all(
        (single.get_submodule(n).weight[~single.get_submodule(n).mask] == 0).all() for n in ("fc1", "fc2")
    )
    assert opt.state  # the single-process run trained too


def test_tp_examples(ranks):
    results, _ = ranks
    for r in results:
        assert r["tp_example_csr"]["max_abs_diff"] < 1e-5  # float CSR: a reordered float32 sum
        # int8 W8A8: fc2's activations quantised per rank (see test_tp_rowwise_equals_single_process)
        assert r["tp_example_int8"]["max_abs_diff"] < 0.05


def test_tp_checkpoints_round_trip(ranks):
    results, out = ranks
    want = tp_model().state_dict()
    got = results[0]["tp_one_rank_state"]
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    for r in results:
        assert r["tp_back_equal"], "1 process -> 2 ranks: the same tensor-parallel outputs"
        assert r["tp_file_back_equal"], "one pyopt file -> the sharded model"
    fresh = pyopt.load(tp_float_model(), out / "tp.safetensors")  # the sharded model's file, one process
    for key, value in want.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    xt = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(results[0]["tp_model_out"], fresh(xt), **FP32_REORDERED)


def test_errors_name_the_layer(ranks):
    results, _ = ranks
    r = results[0]
    assert (
        "'head'" in r["err_bsr"]
        and "SparseLinear" in r["err_bsr"]
        and "blocks must stay whole" in r["err_bsr"]
    )
    assert "'proj'" in r["err_binary"] and "8 per byte" in r["err_binary"]
    assert "'stem'" in r["err_conv"] and "Int8Conv2d has no tensor-parallel split" in r["err_conv"]
    assert "matches no submodule" in r["err_missing"]
    assert "'fc'" in r["err_twice"] and "already split" in r["err_twice"]
    assert "1-D mesh" in r["err_mesh"] and r["ok_mesh_dim"] == "no error"
    assert r["torch_linear_mask"] == [
        "DTensor",
        (5, 6),
        (5, 6),
    ]  # nn.Linear under torch's style keeps its mask
    assert "pyopt.parallel.save" in r["err_pyopt_save"]  # a sharded model is not written shard by shard
    for res in results:
        assert "error" not in res
    print(f"rank times: FSDP part {r['t_fsdp']:.1f} s, tensor-parallel part {r['t_tp']:.1f} s")


# ------------------------------------------------------------------- split rules, in one process (no ranks)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_chunk_bounds_follow_dtensor_shard(world):
    from pyopt.parallel.layouts import chunk_bounds

    for n in (0, 1, 2, 3, 7, 29, 1003):
        sizes = [len(c) for c in torch.arange(n).chunk(world)] if n else []
        sizes += [0] * (world - len(sizes))  # DTensor pads torch.chunk's missing pieces with empty ones
        assert [b - a for a, b in chunk_bounds(n, world)] == sizes
        assert chunk_bounds(n, world)[0][0] == 0 and chunk_bounds(n, world)[-1][1] == n


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("style", ["colwise", "rowwise"])
@pytest.mark.parametrize("fmt", ["csr", "bsr"])
def test_compressed_split_and_merge(world, style, fmt):
    """Each rank's piece is the CSR/BSR of its slice of the weight (built independently with the
    format's own constructor), and the pieces merge back into the original arrays exactly."""
    from pyopt._rules import to_bsr, to_csr
    from pyopt.parallel import layouts

    block = (2, 3) if fmt == "bsr" else (1, 1)
    n, k = 12 * block[0], 12 * block[1]
    weight = torch.randn(n, k)
    blocks = torch.rand(n // block[0], k // block[1]) > 0.5
    mask = (
        blocks.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
        if fmt == "bsr"
        else torch.rand(n, k) > 0.5
    )
    build = (lambda w, m: to_bsr(w, m, block)) if fmt == "bsr" else to_csr
    full = build(weight, mask)
    dim = 0 if style == "colwise" else 1
    bounds = layouts.chunk_bounds(weight.shape[dim], world)
    pieces = []
    for start, stop in bounds:
        p = layouts.Plan(style, {}, 0, 0, (start, stop), unit=block, compressed=True)
        piece = layouts.split_compressed(*full, p)
        sl = (slice(start, stop), slice(None)) if dim == 0 else (slice(None), slice(start, stop))
        want = build(weight[sl], mask[sl])
        for got, exp in zip(piece, want, strict=True):
            assert torch.equal(got, exp.to(got.dtype))
        pieces.append(piece)
    merged = layouts.merge_compressed(pieces, p, bounds)
    for got, exp in zip(merged, full, strict=True):
        assert torch.equal(got, exp)
