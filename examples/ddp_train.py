"""Data-parallel training of a pruned MLP with FusedSGD on torch.distributed (no home-made engine).

    torchrun --nproc_per_node=2 examples/ddp_train.py        # gloo on CPU, nccl on GPUs

Every rank builds the same model (same seed), whose Linear weights carry pruning masks
(pyopt.nn.SparseLinear when available, else nn.Linear + set_param_mask), wraps it in
DistributedDataParallel and trains it with FusedSGD on its slice of each batch. DDP averages the grads,
FusedSGD keeps the pruned weights and their momentum exactly zero, so all ranks stay identical.
tests/test_ddp.py runs `run_worker` in 2 spawned processes and checks that against one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import pyopt
from pyopt.nn import get_param_mask, set_param_mask
from pyopt.optim import FusedSGD

SIZES = (16, 64, 32, 4)
SPARSITY = 0.7
OPTIM = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)


def build_model(seed: int = 0) -> nn.Sequential:
    """The same pruned MLP on every rank: each Linear weight keeps ~30% of its entries."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out)
        mask = torch.rand(linear.weight.shape, generator=gen) >= SPARSITY
        sparse_linear = getattr(pyopt.nn, "SparseLinear", None)
        if sparse_linear is not None:
            layers.append(sparse_linear.from_dense(linear, mask))
        else:
            with torch.no_grad():
                linear.weight.mul_(mask)
            set_param_mask(linear.weight, mask)
            layers.append(linear)
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_batches(steps: int, batch: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, SIZES[0], generator=gen), torch.randn(batch, SIZES[-1], generator=gen))
        for _ in range(steps)
    ]


def train(model: nn.Module, batches, device: torch.device) -> list[float]:
    """FusedSGD on an MSE loss; `model` may be DDP-wrapped (then each batch is this rank's slice)."""
    opt = FusedSGD(model.parameters(), **OPTIM)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def masks_intact(model: nn.Module) -> bool:
    return all(
        ((p == 0) | get_param_mask(p)).all().item()
        for p in model.parameters()
        if get_param_mask(p) is not None
    )


def run_worker(
    rank: int, world_size: int, init_method: str, steps: int, batch: int, out_dir: str | None
) -> None:
    """One rank: DDP + FusedSGD on rows [rank*batch/world, ...) of each global batch."""
    use_cuda = torch.cuda.device_count() >= world_size  # nccl needs one GPU per rank; else gloo on CPU
    dist.init_process_group(
        "nccl" if use_cuda else "gloo", init_method=init_method, rank=rank, world_size=world_size
    )
    try:
        device = (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if use_cuda else torch.device("cpu")
        )
        model = build_model().to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index] if use_cuda else None)
        per_rank = batch // world_size
        local = [
            (x[rank * per_rank : (rank + 1) * per_rank], y[rank * per_rank : (rank + 1) * per_rank])
            for x, y in make_batches(steps, batch)
        ]
        losses = train(ddp, local, device)
        # All ranks must hold the same parameters: compare with rank 0's.
        for p in model.parameters():
            ref = p.detach().clone()
            dist.broadcast(ref, src=0)
            if not torch.equal(ref, p.detach()):
                raise RuntimeError(f"rank {rank}: parameters diverged from rank 0")
        if not masks_intact(model):
            raise RuntimeError(f"rank {rank}: a pruned weight was revived")
        if out_dir is not None:
            torch.save(
                {k: v.cpu() for k, v in model.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt")
            )
        if rank == 0:
            print(
                f"{world_size} ranks, {steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}; ranks identical, masks intact"
            )
    finally:
        dist.destroy_process_group()


def main() -> None:
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # set by torchrun
    run_worker(rank, world_size, "env://", steps=50, batch=64, out_dir=None)


if __name__ == "__main__":
    main()
