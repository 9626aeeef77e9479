"""Run the benchmark families and write bench/results/<machine>.{json,md}. Used by `pyopt bench`."""

from __future__ import annotations

import importlib
import os
import sys

import harness

FAMILIES = ["quant", "int8_linear", "binary_linear", "sparse", "sgd"]


def main(ops: list[str] | None = None, quick: bool = False, out: str | None = None) -> int:
    families = ops or FAMILIES
    rows = []
    for fam in families:
        try:
            mod = importlib.import_module(f"bench_{fam}")
        except ModuleNotFoundError as e:
            if e.name == f"bench_{fam}":
                print(f"[bench] {fam}: no bench/bench_{fam}.py yet, skipped", file=sys.stderr)
                continue
            raise
        print(f"[bench] {fam} ...", file=sys.stderr, flush=True)
        fam_rows = mod.run(quick=quick)
        print(harness.format_table(fam_rows), flush=True)
        rows += fam_rows
    here = os.path.dirname(os.path.abspath(__file__))
    stem = out or os.path.join(here, "results", harness.machine_name() + ("-quick" if quick else ""))
    harness.write_results(rows, stem, {"quick": quick, "families": families})
    print(f"[bench] wrote {stem}.json and {stem}.md", file=sys.stderr)
    return 0
