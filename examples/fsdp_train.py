"""Sharded (FSDP2) fine-tuning of a pruned MLP with FusedSGD, checkpointed with torch.distributed.checkpoint.

    torchrun --nproc_per_node=2 examples/fsdp_train.py                 # gloo on CPU, nccl on GPUs
    torchrun --nproc_per_node=2 examples/fsdp_train.py --bf16          # bf16 params, fp32 grad reduction
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-endpoint=HOST:29500 examples/fsdp_train.py   # 32 GPUs

Every rank builds the same pruned model (pyopt.prune: SparseLinear layers with 70% of their weights
masked), shards it with pyopt.parallel.fully_shard (torch's FSDP2: each rank stores 1/world of every
parameter, the masks sharded alike) and fine-tunes it with FusedSGD on its slice of each batch: FSDP2
all-gathers the weights for forward and backward and reduce-scatters the grads, FusedSGD steps the local
shards in one fused call and keeps pruned weights and their momentum exactly zero. At the end it writes a
DCP checkpoint (model + optimizer, loadable on any number of ranks) and one pyopt.save file.
tests/test_parallel.py runs `run_worker` in 2 spawned processes and checks it against one process.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy

import pyopt
import pyopt.parallel
from pyopt.nn import get_param_mask
from pyopt.optim import FusedSGD

SIZES = (16, 64, 32, 4)
SPARSITY = 0.7
OPTIM = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)


def build_model(seed: int = 0) -> nn.Sequential:
    """The same pruned MLP on every rank: Linear -> ReLU -> ... with 70% of each hidden layer's weights
    pruned by magnitude (SparseLinear, masked; the last layer stays a plain nn.Linear)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    hidden = [str(i) for i, m in enumerate(model) if isinstance(m, nn.Linear)][:-1]
    model, _ = pyopt.prune(model, SPARSITY, include=hidden)
    return model


def make_batches(steps: int, batch: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, SIZES[0], generator=gen), torch.randn(batch, SIZES[-1], generator=gen))
        for _ in range(steps)
    ]


def shard(model: nn.Module, mesh, bf16: bool = False) -> nn.Module:
    """FSDP2: one unit per layer with parameters, then the root (its own unit for what is left)."""
    kwargs = {"mesh": mesh}
    if bf16:  # compute in bf16, keep float32 shards and reduce the grads in float32
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model:
        if any(True for _ in layer.parameters()):
            pyopt.parallel.fully_shard(layer, **kwargs)
    pyopt.parallel.fully_shard(model, **kwargs)
    return model


def train(model: nn.Module, batches, device, opt=None) -> tuple[list[float], FusedSGD, float]:
    """FusedSGD on an MSE loss; returns (losses, optimizer, seconds per step after the first)."""
    opt = opt or FusedSGD(model.parameters(), **OPTIM)
    losses, t0 = [], None
    for i, (x, y) in enumerate(batches):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x.to(device)).float(), y.to(device))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    per_step = (time.perf_counter() - t0) / (len(batches) - 1) if len(batches) > 1 else float("nan")
    return losses, opt, per_step


def masks_intact(model: nn.Module, opt: FusedSGD) -> bool:
    """On this rank's shards: every pruned weight, and its momentum, is exactly zero."""
    for p in model.parameters():
        mask = get_param_mask(p)
        if mask is None:
            continue
        local = p.to_local() if hasattr(p, "to_local") else p
        keep = mask.to_local() if hasattr(mask, "to_local") else mask
        buf = opt.state[p].get("momentum_buffer")
        buf = buf.to_local() if hasattr(buf, "to_local") else buf
        if (local[~keep] != 0).any() or (buf is not None and (buf[~keep] != 0).any()):
            return False
    return True


def run_worker(rank, world_size, init_method, steps, batch, bf16=False, checkpoint=None, save=None) -> dict:
    """One rank: FSDP2 + FusedSGD on rows [rank*batch/world, ...) of each global batch; returns what the
    tests check (the gathered state on every rank, losses, masks, step time)."""
    use_cuda = torch.cuda.device_count() >= world_size  # nccl needs one GPU per rank; else gloo on CPU
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", init_method=init_method, rank=rank, world_size=world_size
        )
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world_size,))
    model = shard(build_model().to(device), mesh, bf16)
    per_rank = batch // world_size
    local = [
        (x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank])
        for x, y in make_batches(steps, batch)
    ]
    losses, opt, per_step = train(model, local, device)
    intact = masks_intact(model, opt)
    if checkpoint:
        pyopt.parallel.save_checkpoint(checkpoint, model, opt)
    if save:
        pyopt.parallel.save(model, save)
    full = {
        k: v.full_tensor().cpu() if hasattr(v, "full_tensor") else v.cpu()
        for k, v in model.state_dict().items()
    }
    return {"state": full, "losses": losses, "masks_intact": intact, "step_s": per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64, help="global batch (split across ranks)")
    parser.add_argument("--bf16", action="store_true", help="MixedPrecisionPolicy: bf16 params, fp32 reduce")
    parser.add_argument("--checkpoint", default="fsdp-ckpt", help="DCP checkpoint folder written at the end")
    parser.add_argument("--save", default="fsdp-model.safetensors", help="pyopt.save file written at the end")
    args = parser.parse_args()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # set by torchrun
    try:
        out = run_worker(
            rank, world_size, "env://", args.steps, args.batch, args.bf16, args.checkpoint, args.save
        )
        if not out["masks_intact"]:
            raise RuntimeError(f"rank {rank}: a pruned weight or its momentum is not zero")
        if rank == 0:
            print(
                f"{world_size} ranks, {args.steps} steps{' (bf16)' if args.bf16 else ''}: loss "
                f"{out['losses'][0]:.4f} -> {out['losses'][-1]:.4f}, {1e3 * out['step_s']:.1f} ms/step; "
                f"masks intact on every rank; checkpoint {args.checkpoint}/, model {args.save}"
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
