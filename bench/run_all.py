"""Run the benchmark families and write bench/results/<machine>.{json,md} and one PNG per family.
Used by `pyopt bench`. A family is a bench/bench_<family>.py defining run(quick) -> list[harness.Row]."""

from __future__ import annotations

import glob
import importlib
import os
import sys
import time

import harness

HERE = os.path.dirname(os.path.abspath(__file__))
# Every bench/bench_<family>.py, in the order of the stack (kernels first, training last).
_ORDER = ["quant", "int8_linear", "binary_linear", "sparse", "prune", "sgd", "models"]
FAMILIES = sorted(
    (os.path.basename(p)[len("bench_") : -len(".py")] for p in glob.glob(os.path.join(HERE, "bench_*.py"))),
    key=lambda f: (_ORDER.index(f) if f in _ORDER else len(_ORDER), f),
)


def main(ops: list[str] | None = None, quick: bool = False, out: str | None = None, gpu: bool = False) -> int:
    """gpu=True: only the GPU cases (each family's run_gpu); otherwise the CPU cases, plus the GPU cases
    where a GPU is present."""
    import torch

    if gpu and not torch.cuda.is_available():
        print("[bench] --gpu: no CUDA device here", file=sys.stderr)
        return 1
    families = ops or FAMILIES
    rows = []
    t0 = time.perf_counter()
    for i, fam in enumerate(families, 1):
        try:
            mod = importlib.import_module(f"bench_{fam}")
        except ModuleNotFoundError as e:
            if e.name == f"bench_{fam}":
                print(f"[bench] {fam}: no bench/bench_{fam}.py yet, skipped", file=sys.stderr)
                continue
            raise
        print(f"[bench] ({i}/{len(families)}) {fam} ...", file=sys.stderr, flush=True)
        fam_rows = [] if gpu else mod.run(quick=quick)
        if (gpu or torch.cuda.is_available()) and hasattr(mod, "run_gpu"):
            fam_rows += mod.run_gpu(quick=quick)
        print(
            f"[bench] {fam}: {len(fam_rows)} cases, {time.perf_counter() - t0:.0f} s so far", file=sys.stderr
        )
        print(harness.format_table(fam_rows), flush=True)
        rows += fam_rows
    stem = out or os.path.join(
        HERE, "results", harness.machine_name() + ("-gpu" if gpu else "") + ("-quick" if quick else "")
    )
    if not rows:
        print("[bench] no benchmark ran, nothing written", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    harness.write_results(rows, stem, {"quick": quick, "families": families, "gpu": gpu})
    pngs = ", ".join(f"{stem}-{fam}.png" for fam in dict.fromkeys(r.family for r in rows))
    print(f"[bench] wrote {stem}.json, {stem}.md, {pngs}", file=sys.stderr)
    return 0
