"""Sweep the Triton int8 GEMM's launch configurations on a GPU (bench/gpu_check.sh runs it).

The kernels were written without a GPU; kernels/int8_linear.py:default_config is a first guess. This prints,
for the int8 GPU cases (W8A8 M=1024/4096 K=N=4096, weight-only M=1 K=N=4096/8192, bf16), every
candidate configuration's time, its ratio to bf16 F.linear measured in the same process, and whether its
result matches the reference, so that one device run is enough to pick the defaults.

    python bench/tune_int8_gpu.py [--quick]      (needs CUDA; prints a Markdown table)
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time

import harness
import torch
import torch.nn.functional as F
from pyopt.kernels import int8_linear as kern
from torch import nn

from pyopt.nn import Int8Linear


def _configs(dynamic: bool, quick: bool) -> list[dict]:
    if dynamic:  # large M: tensor-core tiles; int8 mma wants deep K
        tiles = [(128, 128, 64), (128, 128, 128), (128, 256, 64), (64, 128, 128), (256, 128, 64)]
        launch = [(8, 3), (8, 4)] if not quick else [(8, 3)]
    else:  # M = 1: occupancy (narrow N tiles) and a long K stride per program
        tiles = [(16, 16, 128), (16, 32, 128), (16, 32, 256), (16, 64, 128), (16, 128, 64)]
        launch = [(4, 3), (2, 4)] if not quick else [(4, 3)]
    return [
        dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_warps=w, num_stages=st)
        for (bm, bn, bk), (w, st) in itertools.product(tiles, launch)
    ]


def _label(cfg: dict) -> str:
    return "{BLOCK_M}x{BLOCK_N}x{BLOCK_K} g{GROUP_M} w{num_warps} s{num_stages}".format(**cfg)


def sweep(quick: bool) -> None:
    """Print one Markdown row per (case, configuration) as it is measured."""
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    print("| case | config | ms | bf16 F.linear ms | ratio | result |\n|---|---|---|---|---|---|", flush=True)
    cases = [("dynamic", 1024, 4096), ("weight_only", 1, 4096)]
    if not quick:
        cases += [("dynamic", 4096, 4096), ("weight_only", 1, 8192)]
    with torch.inference_mode():
        for mode, m, kn in cases:
            lin = nn.Linear(kn, kn).to(dev, dt).eval()
            mod = Int8Linear.from_float(lin, mode)
            x = torch.randn(m, kn, device=dev, dtype=dt)
            want = F.linear(x.float(), mod.weight.float() * mod.weight_scales[:, None], mod.bias)
            fn = kern.int8_linear_dynamic if mode == "dynamic" else kern.int8_linear_weight_only
            default = kern.default_config(m, kn, x.device)
            base_s = harness.timeit(lambda x=x, lin=lin: F.linear(x, lin.weight, lin.bias), dev, 20, 0.1)
            for cfg in [default] + [c for c in _configs(mode == "dynamic", quick) if c != default]:
                call = functools.partial(fn, x, mod.weight, mod.weight_scales, mod.bias, config=cfg)
                name = ("default " if cfg is default else "") + _label(cfg)
                try:
                    got = call()
                    torch.cuda.synchronize()
                # a configuration this GPU cannot compile or launch (too much shared memory, ...)
                except Exception as e:
                    print(f"| {mode} M={m} K=N={kn} | {name} | - | - | - | {type(e).__name__} |", flush=True)
                    continue
                ok = torch.allclose(got.float(), want, rtol=0.05, atol=0.05)
                s = harness.timeit(call, dev, 20, 0.1)
                print(
                    f"| {mode} M={m} K=N={kn} | {name} | {s * 1e3:.4f} | {base_s * 1e3:.4f} | "
                    f"{base_s / s:.2f}x | {'ok' if ok else 'MISMATCH'} |",
                    flush=True,
                )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer configurations and cases")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("tune_int8_gpu: no CUDA device", file=sys.stderr)
        return 2
    t0 = time.time()
    sweep(args.quick)
    print(f"[tune] {time.time() - t0:.0f} s on {torch.cuda.get_device_name()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
