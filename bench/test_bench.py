"""Every bench case under pytest-benchmark: `pytest bench/ --benchmark-only` (see bench/conftest.py)."""


def test_bench(benchmark, bench_variant):
    case, name = bench_variant
    benchmark.group = f"{case.family}: {case.case}"
    benchmark.extra_info.update(
        group_key=benchmark.group,
        family=case.family,
        case=case.case,
        variant=name,
        role="pyopt" if name in case.pyopt else "baseline",
        pyopt=case.pyopt,
        baselines=case.baselines,
        metric=case.metric,
        quality=case.quality,
    )
    benchmark(case.fns[name])
