"""pytest-benchmark front end of the bench suite: `pytest bench/ --benchmark-only`.

Every bench/bench_<family>.py case becomes one benchmark group ("<family>: <case>") holding pyopt's variants
and their baselines, one test each (ids `<family>/<case>/<variant>`), so pytest-benchmark's --benchmark-json,
--benchmark-save / --benchmark-autosave, --benchmark-compare and --benchmark-group-by work as usual. The
cases are the same callables `pyopt bench` times (each family's run(quick) inside harness.collecting()).

Ratios: at the end of the session the median of every pyopt variant is divided into the median of each of
its group's baselines (all measured in this run) and printed as pyopt bench's table; --benchmark-json files
get them under "pyopt_ratios" (with the quality metric the family reports).

Options: --bench-quick (small sizes, like `pyopt bench --quick`), --bench-family NAME (repeatable).
`make test` never collects this folder (pyproject's testpaths is tests/).
"""

from __future__ import annotations

import functools
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import harness  # noqa: E402
import run_all  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("pyopt bench")
    group.addoption("--bench-quick", action="store_true", help="small sizes (as pyopt bench --quick)")
    group.addoption("--bench-family", action="append", default=None, help="one family; repeatable")


@functools.cache
def _cases(families: tuple[str, ...], quick: bool) -> list[harness.Case]:
    import importlib

    merged: dict[tuple[str, str], harness.Case] = {}
    for fam in families:
        mod = importlib.import_module(f"bench_{fam}")
        with harness.collecting() as found:
            mod.run(quick=quick)
        for case in found:  # one group per (family, case): the same pyopt call against several baselines
            key = (case.family, case.case)
            if key not in merged:
                merged[key] = case
                continue
            into = merged[key]
            for name, fn in case.fns.items():
                into.fns.setdefault(name, fn)
            into.pyopt += [n for n in case.pyopt if n not in into.pyopt]
            into.baselines += [n for n in case.baselines if n not in into.baselines]
            into.quality = {**case.quality, **into.quality}
    return list(merged.values())


def _selected(config) -> list[harness.Case]:
    families = tuple(config.getoption("--bench-family") or run_all.FAMILIES)
    return _cases(families, bool(config.getoption("--bench-quick")))


def pytest_generate_tests(metafunc):
    if "bench_variant" not in metafunc.fixturenames:
        return
    params, ids = [], []
    for case in _selected(metafunc.config):
        for name in case.fns:
            params.append((case, name))
            ids.append(f"{case.family}/{case.case}/{name}".replace(" ", "_"))
    metafunc.parametrize("bench_variant", params, ids=ids)


def _ratios(benchmarks) -> list[harness.Row]:
    """pyopt bench's rows from pytest-benchmark's medians (pyopt variant vs each baseline of its group)."""
    by_group: dict[str, dict[str, float]] = {}
    meta: dict[str, dict] = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {}) if isinstance(bench, dict) else bench.extra_info
        stats = bench["stats"] if isinstance(bench, dict) else bench.stats
        median = stats["median"] if isinstance(stats, dict) else stats.median
        group = info.get("group_key")
        if group is None or median is None:
            continue
        by_group.setdefault(group, {})[info["variant"]] = median
        meta[group] = info
    rows = []
    for group, times in by_group.items():
        info = meta[group]
        for p in info["pyopt"]:
            for b in info["baselines"]:
                if p in times and b in times:
                    q = info.get("quality", {})
                    quality = (
                        f"{info['metric']} {q[p]:.4f}" + (f" / {q[b]:.4f}" if b in q else "")
                        if p in q
                        else None
                    )
                    rows.append(
                        harness.Row(
                            info["family"],
                            f"{info['case']}: {p}" if len(info["pyopt"]) > 1 else info["case"],
                            times[p] * 1e3,
                            b,
                            times[b] * 1e3,
                            times[b] / times[p],
                            quality=quality,
                        )  # fmt: skip
                    )
    return rows


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["pyopt_ratios"] = [
        {
            "family": r.family,
            "case": r.case,
            "baseline": r.baseline,
            "speedup": r.speedup,
            "quality": r.quality,
        }
        for r in _ratios(output_json["benchmarks"])
        if not math.isnan(r.speedup)
    ]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if getattr(b, "stats", None)]
    rows = _ratios(benchmarks)
    if rows:
        terminalreporter.write_sep("=", "pyopt ratios (baseline median / pyopt median, this run)")
        terminalreporter.write_line(harness.format_table(rows))
