"""`pyopt` command line: info, bench, demo, compress, tune."""

from __future__ import annotations

import argparse
import os
import sys

from . import compress, demo


def cmd_info(args) -> int:
    import torch

    from ..ops import backends as _backend
    from ..ops import native as _native

    print(
        f"pyopt {__import__('pyopt').__version__}  torch {torch.__version__}  python {sys.version.split()[0]}"
    )
    print(
        f"CPU ISA        : {_native.detected_isa()} (kernels use {_native.active_isa()} here; "
        "PYOPT_CPU_ISA / pyopt.use_isa cap it)"
    )
    amx = _native.amx_status()
    if amx["amx_tile"]:
        flags = ", ".join(f for f in ("amx_int8", "amx_bf16") if amx[f]) or "no int8 / bf16"
        grant = "granted" if amx["permitted"] else "NOT granted by the OS: the amx tier is off"
        print(f"AMX            : {flags}; tile state {grant}")
    else:
        print("AMX            : not on this CPU")
    if _native.cpu_ext() is not None:
        print(f"pyopt._C       : loaded ({_native.cpu_ext().omp_threads()} OpenMP threads)")
    else:
        print("pyopt._C       : not loaded (pure-Python install or build failed)")
    cuda_built = _native.cuda_ext_built()
    print(f"pyopt._C_cuda  : {'built' if cuda_built else 'not built'} (torch CUDA: {torch.version.cuda})")
    tv = _native.triton_version()
    if _native.triton_interpret():
        mode = "interpreter (TRITON_INTERPRET=1): also runs on CPU tensors when forced"
    elif torch.version.cuda is not None:
        mode = "compiled for the GPU"
    else:
        mode = "unused here (no CUDA in this torch; TRITON_INTERPRET=1 interprets it on CPU)"
    print(f"triton         : {tv + ', ' + mode if tv else 'not installed'}")
    print(f"backends       : {', '.join(_backend.available_backends())}")
    print()
    devices = ["cpu"] + (["cuda"] if torch.version.cuda is not None else [])
    print(f"{'op':32s} " + " ".join(f"{d + ' runs':>12s}" for d in devices) + "   implementations")
    for op in sorted(_backend._reference):
        runs = [_backend.cpu_kernel(op)] + ([_backend.cuda_kernel(op)] if len(devices) > 1 else [])
        impls = ",".join(_backend.implementations(op))
        print(f"{op:32s} " + " ".join(f"{r:>12s}" for r in runs) + f"   {impls}")
    from ..nn.sparse_format import DEFAULT_CACHE

    print(f"\nsparse format choice: {len(DEFAULT_CACHE)} calibrated decision(s) in this process")
    for key, d in DEFAULT_CACHE.items():
        print(f"  {key[0]} {key[1]} {key[2]} sparsity~{key[3]:.2f}: {d.format} ({d.reason})")
    return 0


def _bench_dir() -> str:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(here, "bench")
    if not os.path.isfile(os.path.join(path, "harness.py")):
        raise SystemExit(
            "pyopt bench: the bench/ folder of a source checkout is needed (not in a wheel install)"
        )
    return path


def cmd_bench(args) -> int:
    sys.path.insert(0, _bench_dir())
    import run_all  # bench/run_all.py

    return run_all.main(ops=args.op, quick=args.quick, out=args.out, gpu=args.gpu)


def cmd_tune(args) -> int:
    from .. import tuning

    path = tuning.cache_path() if args.out is None else __import__("pathlib").Path(args.out)
    if args.show:
        print(f"cache   : {path} ({'present' if path.is_file() else 'absent'})")
        print(f"settings: {tuning.current()}")
        return 0
    print(
        f"pyopt tune: measuring the int8 GEMM's knobs on this machine ({'quick' if args.quick else 'full'})"
    )
    result = tuning.search(quick=args.quick)
    tuning.save(result, path)
    tuning.apply(result["settings"])
    print(f"settings {result['settings']} written to {path} (applied at every `import pyopt` from now on)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pyopt", description="pyopt: smaller, faster PyTorch models")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="backends, CPU ISA, which implementation runs each op").set_defaults(
        fn=cmd_info
    )
    b = sub.add_parser("bench", help="benchmarks vs torch baselines (ratios measured in one run)")
    b.add_argument(
        "--op", action="append", help="one family (bench/bench_<family>.py, e.g. sparse); repeatable"
    )
    b.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    b.add_argument("--gpu", action="store_true", help="only the GPU cases (each family's run_gpu)")
    b.add_argument("--out", default=None, help="results stem (default bench/results/<machine>)")
    b.set_defaults(fn=cmd_bench)
    d = sub.add_parser("demo", help="the end-to-end CNN case: train, prune, quantise, save, measure")
    demo.add_arguments(d)
    d.set_defaults(fn=demo.main)
    c = sub.add_parser("compress", help="prune and/or quantise your own model, save it with pyopt.save")
    compress.add_arguments(c)
    c.set_defaults(fn=compress.main)
    t = sub.add_parser("tune", help="measure the int8 GEMM's tile/thread knobs here and cache the best")
    t.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats (a few seconds)")
    t.add_argument("--out", default=None, help="cache file (default: tuning.cache_path(), PYOPT_TUNE_CACHE)")
    t.add_argument("--show", action="store_true", help="print the cache path and current settings only")
    t.set_defaults(fn=cmd_tune)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
