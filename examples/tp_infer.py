"""Tensor-parallel inference of a compressed MLP block: pyopt's layers split across ranks.

    torchrun --nproc_per_node=2 examples/tp_infer.py                    # int8 (W8A8), gloo on CPU
    torchrun --nproc_per_node=2 examples/tp_infer.py --variant csr      # 90% pruned, compressed CSR
    torchrun --nproc_per_node=8 examples/tp_infer.py --hidden 16384     # one 8-GPU node, nccl

Every rank builds the same float MLP (fc1: d -> hidden, ReLU, fc2: hidden -> d) and converts it with
pyopt's public API (pyopt.quantize / pyopt.prune + pyopt.sparsify). torch's `parallelize_module` then
splits it with pyopt's styles: fc1 column-wise (each rank computes hidden/world of the features, its int8
weight and scales or its CSR rows cut together), fc2 row-wise (each rank multiplies its slice, one
all-reduce sums them, the bias is added once). The block runs with that single all-reduce; the script
prints the largest difference to the single-device output and the time per forward.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

import pyopt
from pyopt.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

VARIANTS = ("int8", "int8-weight-only", "csr", "csr-int8", "binary")


def build_model(d: int, hidden: int, variant: str, seed: int = 0) -> nn.Sequential:
    """The float MLP, converted: the same on every rank (same seed)."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(d, hidden))
    model.add_module("act", nn.ReLU())
    model.add_module("fc2", nn.Linear(hidden, d))
    if variant in ("int8", "int8-weight-only"):
        model, _ = pyopt.quantize(
            model, mode="dynamic" if variant == "int8" else "weight_only", min_weights=0
        )
    elif variant == "binary":
        model, _ = pyopt.quantize(model, mode="binary", min_weights=0)
    elif variant in ("csr", "csr-int8"):
        model, _ = pyopt.prune(model, 0.9)
        model, _ = pyopt.sparsify(model, format="csr")
        if variant == "csr-int8":
            model, _ = pyopt.quantize(model, mode="weight_only", min_weights=0)
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return model.eval()


def tensor_parallel(model: nn.Sequential, mesh) -> nn.Sequential:
    return parallelize_module(model, mesh, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})


def time_forward(model, x, repeat: int) -> float:
    """Median seconds per forward (after 2 warm-up calls)."""
    times = []
    with torch.inference_mode():
        for i in range(repeat + 2):
            t0 = time.perf_counter()
            model(x)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run_worker(
    rank, world_size, init_method, variant="int8", d=256, hidden=1024, batch=32, repeat=20
) -> dict:
    use_cuda = torch.cuda.device_count() >= world_size
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", init_method=init_method, rank=rank, world_size=world_size
        )
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank))) if use_cuda else torch.device("cpu")
    )
    if use_cuda:
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world_size,))
    model = build_model(d, hidden, variant).to(device)
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        reference = model(x)  # the single-device result, for the comparison
    single_s = time_forward(model, x, repeat)
    tensor_parallel(model, mesh)
    with torch.inference_mode():
        y = model(x)
    tp_s = time_forward(model, x, repeat)
    return {
        "max_abs_diff": (y - reference).abs().max().item(),
        "bitwise_equal": torch.equal(y, reference),
        "single_s": single_s,
        "tp_s": tp_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, default="int8")
    parser.add_argument("--d", type=int, default=256, help="model width")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden width (split across ranks)")
    parser.add_argument("--batch", type=int, default=32, help="tokens per forward")
    args = parser.parse_args()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # set by torchrun
    try:
        out = run_worker(rank, world_size, "env://", args.variant, args.d, args.hidden, args.batch)
        if rank == 0:
            print(
                f"{world_size} ranks, {args.variant} MLP {args.d}->{args.hidden}->{args.d}, batch {args.batch}: "
                f"max |TP - single device| = {out['max_abs_diff']:.3g}"
                f"{' (bit-identical)' if out['bitwise_equal'] else ''}; "
                f"{1e3 * out['tp_s']:.2f} ms per forward (single device {1e3 * out['single_s']:.2f} ms)"
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
