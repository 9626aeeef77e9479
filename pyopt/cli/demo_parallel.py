"""The demo's parallel runs: the pruned CNN's fine-tune, data-parallel and model-parallel, on 2 ranks.

After the float32 training, `pyopt demo` fine-tunes the pruned model (pyopt.prune(0.9) of fc1/fc2:
masked SparseLinear layers) for a few steps three ways, from the same start, on the same batches:

    single process         FusedSGD: the reference
    data parallel (DDP)    2 ranks, each half of every batch; DistributedDataParallel averages the grads
    model parallel (TP)    2 ranks, each the whole batch; fc1 split column-wise and fc2 row-wise
                           (pyopt.parallel styles: each rank holds half of each layer's weights and masks,
                           one all-reduce per forward), the convs replicated

and reports the time per step and the largest parameter difference to the single process (the same
maths, float32 sums in another order). BatchNorm uses its running statistics in these runs (eval mode),
so that half a batch per rank computes the same function as the whole batch. torch.distributed with
gloo on CPU, ranks spawned as processes (the same code runs nccl on GPUs: examples/fsdp_train.py).
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
import time

import torch
import torch.nn.functional as F
from torch import nn

import pyopt

WORLD = 2
STEPS = 6
MATCH = 1e-4  # largest |difference| of a parameter to the single process still called a match


def _optimizer(model: nn.Module, lr: float):
    return pyopt.optim.FusedSGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _prepare(model: nn.Module) -> nn.Module:
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # running statistics: the same function on a half batch as on the whole
    return model


def _steps(model, opt, batches, step_fn) -> float:
    """Train on `batches`; median seconds per step after the first."""
    times = []
    for x, y in batches:
        t0 = time.perf_counter()
        opt.zero_grad()
        step_fn(model, x, y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    rest = sorted(times[1:]) or times
    return rest[len(rest) // 2]


def _loss(model, x, y):
    return F.cross_entropy(model(x), y)


def _masks_intact(model: nn.Module) -> bool:
    for m in model.modules():
        if isinstance(m, pyopt.nn.SparseLinear) and m.format == "masked":
            w, mask = m.weight, m.mask
            w, mask = (t.to_local() if hasattr(t, "to_local") else t for t in (w, mask))
            if (w[~mask] != 0).any():
                return False
    return True


def _full_state(model: nn.Module) -> dict:
    return {
        k: v.full_tensor() if hasattr(v, "full_tensor") else v.detach().clone()
        for k, v in model.state_dict().items()
    }


def _rank(rank: int, port: int, workdir: str, arch: dict, size: int, lr: float, threads: int) -> None:
    """One rank: the data-parallel run, then the model-parallel one; rank 0 writes what it saw."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    from ..parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    from . import demo

    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),  # a failed rank must not leave the other waiting for long
    )  # fmt: skip
    try:
        batches = torch.load(os.path.join(workdir, "batches.pt"), weights_only=True)
        path = os.path.join(workdir, "pruned.safetensors")
        out = {}

        model = _prepare(pyopt.load(demo.build_model(**arch, size=size), path))
        ddp = DistributedDataParallel(model)
        half = [(x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]) for x, y in batches]
        out["ddp_s"] = _steps(ddp, _optimizer(model, lr), half, _loss)
        out["ddp"], out["ddp_masks"] = _full_state(model), _masks_intact(model)

        model = _prepare(pyopt.load(demo.build_model(**arch, size=size), path))
        mesh = init_device_mesh("cpu", (WORLD,))
        parallelize_module(model, mesh, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})
        out["tp_s"] = _steps(model, _optimizer(model, lr), batches, _loss)
        out["tp"], out["tp_masks"] = _full_state(model), _masks_intact(model)
        if rank == 0:
            torch.save(out, os.path.join(workdir, "ranks.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(base: nn.Module, data, cfg, head: list[str], workdir: str) -> dict:
    """Prune `base`'s head, fine-tune it single / DDP / TP for STEPS steps; returns the report entry."""
    import torch.multiprocessing as mp

    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    pruned, _ = pyopt.prune(copy.deepcopy(base), 0.9, include=head)
    pyopt.save(pruned, os.path.join(workdir, "pruned.safetensors"))
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(data.y_train), generator=gen)[: STEPS * cfg.batch_size].reshape(STEPS, -1)
    batches = [(data.x_train[i], data.y_train[i]) for i in idx]
    torch.save(batches, os.path.join(workdir, "batches.pt"))
    lr = cfg.lr / 10  # the fine-tune learning rate of the pruned variants

    single = _prepare(copy.deepcopy(pruned))
    single_s = _steps(single, _optimizer(single, lr), batches, _loss)
    threads = max(1, torch.get_num_threads() // WORLD)  # the ranks share this machine's cores
    arch = {"channels": (cfg.width, 2 * cfg.width, 2 * cfg.width), "hidden": (cfg.hidden, cfg.hidden)}
    mp.start_processes(
        _rank, args=(_free_port(), workdir, arch, cfg.size, lr, threads), nprocs=WORLD, start_method="spawn"
    )
    ranks = torch.load(os.path.join(workdir, "ranks.pt"), weights_only=True)
    want = single.state_dict()
    result = {"steps": STEPS, "batch": cfg.batch_size, "ranks": WORLD, "single_ms": 1e3 * single_s}
    for mode in ("ddp", "tp"):
        diff = max((ranks[mode][k].float() - v.float()).abs().max().item() for k, v in want.items())
        result[f"{mode}_ms"] = 1e3 * ranks[f"{mode}_s"]
        result[f"{mode}_max_diff"] = diff
        result[f"{mode}_matches"] = bool(diff <= MATCH and ranks[f"{mode}_masks"])
    result["seconds"] = time.perf_counter() - t_start  # the whole parallel part, process start-up included
    return result


def markdown(r: dict) -> str:
    rows = [
        ("single process", r["single_ms"], None, None),
        (
            f"data parallel (DDP, {r['ranks']} ranks x {r['batch'] // r['ranks']})",
            r["ddp_ms"],
            r["ddp_max_diff"],
            r["ddp_matches"],
        ),
        (
            f"model parallel (fc1 colwise + fc2 rowwise, {r['ranks']} ranks)",
            r["tp_ms"],
            r["tp_max_diff"],
            r["tp_matches"],
        ),
    ]
    lines = [
        f"Parallel fine-tune of the pruned-90 model ({r['steps']} steps of batch {r['batch']}, gloo on CPU; "
        f"{r['seconds']:.0f} s with starting the {r['ranks']} processes):",
        "",
        "| run | ms / step | max param diff vs single | matches single process |",
        "|---|---:|---:|:---:|",
    ]
    for name, ms, diff, ok in rows:
        lines.append(
            f"| {name} | {ms:.1f} | {'' if diff is None else f'{diff:.2e}'} | {'' if ok is None else ('yes' if ok else 'NO')} |"
        )
    return "\n".join(lines)
