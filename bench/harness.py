"""The one benchmark harness: time pyopt and its torch baseline in the same run, report the ratio.

Each bench/bench_<family>.py defines `run(quick: bool) -> list[Row]` built with `compare(...)` (one pyopt
call against one baseline) or `compare_many(...)` (a group: several pyopt variants and several baselines
timed together, each pyopt variant reported against each baseline, with a quality metric beside the speed).
`python -m pyopt bench` (make bench) runs them all and writes bench/results/<machine>.{json,md}.

The same cases run under pytest-benchmark (`pytest bench/ --benchmark-only`, bench/conftest.py): inside
`collecting()`, compare / compare_many time nothing and record each group's callables as a `Case` instead.

Timing: pyopt.timing.time_many (baseline and pyopt interleaved in rounds, medians).

Bandwidth: a kernel's GB/s comes from an explicit bytes model (what it must read + write), and is
compared with a memcpy moving the same traffic (nbytes/2 copied = nbytes read + written), measured in
the same process.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import math
import os
import textwrap
from collections.abc import Callable

import torch

from pyopt.timing import cpu_flags, machine_name, time_many


def timeit(fn: Callable[[], object], device: str = "cpu", repeat: int = 10, min_time: float = 0.2) -> float:
    """Median seconds per call of fn()."""
    return time_many({"f": fn}, device, repeat, min_time)["f"]


CALLS = 200  # calls per sample of the per-call overhead rows (a ~5 us call is too short for one timer read)


def calls(fn: Callable[[], object], n: int = CALLS) -> Callable[[], None]:
    """fn run n times back to back: one sample of a per-call overhead row (its ms / n is the per-call time)."""

    def run():
        for _ in range(n):
            fn()

    return run


def gpu_backends(op: str) -> list[str]:
    """The GPU backends ("cuda", "triton") implementing pyopt::<op> that can run here; benches time each."""
    from pyopt.ops import backends

    return [b for b in ("cuda", "triton") if b in backends.implementations(op) and backends.usable(b, "cuda")]


def on_backend(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    """fn run with pyopt.use_backend(backend) (the context is entered per call: a few us of Python)."""
    import pyopt

    def call():
        with pyopt.use_backend(backend):
            return fn()

    return call


def check_close(
    family: str, case: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float
) -> None:
    """A benchmark is only worth reading if it computes the right thing: compare once, loudly."""
    if got.shape != want.shape:
        print(
            f"[check] {family} {case}: MISMATCH in shape {tuple(got.shape)} vs {tuple(want.shape)}",
            flush=True,
        )
        return
    err = (got.double() - want.double()).abs()
    bound = atol + rtol * want.double().abs()
    bad = int((~(err <= bound)).sum())  # NaN compares false: a NaN output counts as wrong
    status = "ok" if bad == 0 else f"MISMATCH in {bad} of {err.numel()} elements"
    print(
        f"[check] {family} {case}: max abs err {err.max().item() if err.numel() else 0:.3g} {status}",
        flush=True,
    )


def memcpy_seconds(nbytes: int, device: str = "cpu", repeat: int = 10) -> float:
    """Median time of a memcpy that moves `nbytes` of memory traffic in all (the bandwidth yardstick).

    A copy of n bytes reads n and writes n, so the yardstick for a kernel whose bytes model is
    `nbytes` (reads + writes) copies nbytes/2 bytes: both then move the same traffic.
    """
    src = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    return timeit(lambda: dst.copy_(src), device, repeat)


@dataclasses.dataclass
class Row:
    family: str
    case: str  # what is measured, with its shape
    pyopt_ms: float
    baseline: str  # what a user would otherwise call
    baseline_ms: float
    speedup: float  # baseline_ms / pyopt_ms
    target: float | None = None  # the speedup pyopt aims for, if any
    gbps: float | None = None  # pyopt's bandwidth under the bytes model
    memcpy_pct: float | None = None  # gbps as % of a memcpy of the same bytes
    memcpy_target_pct: float | None = None
    device: str = "cpu"
    quality: str | None = None  # e.g. "cos 0.9972 / 0.948": pyopt's / the baseline's, vs the float model

    @property
    def met(self) -> bool | None:
        ok = []
        if self.target is not None:
            ok.append(self.speedup >= self.target)
        if self.memcpy_target_pct is not None and self.memcpy_pct is not None:
            ok.append(self.memcpy_pct >= self.memcpy_target_pct)
        return all(ok) if ok else None


@dataclasses.dataclass
class Case:
    """One benchmark group for pytest-benchmark: pyopt's variants and their baselines, by name."""

    family: str
    case: str
    fns: dict[str, Callable[[], object]]
    pyopt: list[str]
    baselines: list[str]
    quality: dict[str, float] = dataclasses.field(default_factory=dict)
    metric: str = ""
    device: str = "cpu"


_collected: contextvars.ContextVar[list | None] = contextvars.ContextVar("bench_collected", default=None)


@contextlib.contextmanager
def collecting():
    """Within: compare / compare_many record Cases (yielded list) instead of timing."""
    cases: list[Case] = []
    token = _collected.set(cases)
    try:
        yield cases
    finally:
        _collected.reset(token)


def _fmt_quality(metric: str, q: dict, a: str, b: str) -> str | None:
    if not metric or a not in q:
        return None
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return f"{metric} {fmt(q[a])}" + (f" / {fmt(q[b])}" if b in q else "")


def compare_many(
    family: str,
    case: str,
    fns: dict[str, Callable[[], object]],
    pyopt: list[str],
    baselines: list[str],
    *,
    quality: dict[str, float] | None = None,
    metric: str = "",
    targets: dict[tuple[str, str], float] | None = None,
    device: str = "cpu",
    repeat: int = 10,
    min_time: float = 0.2,
    budget_s: float | None = None,
) -> list[Row]:
    """Time every variant of one group in the same interleaved rounds; a Row per (pyopt variant, baseline).

    quality: {variant: value of `metric`} (e.g. cosine or top-1 agreement with the float model), shown beside
    the speed as "pyopt's / the baseline's". targets: {(pyopt variant, baseline): speedup aimed for}.
    budget_s: where one round of all variants takes long (a whole model on a slow path), fewer rounds — at
    least one, after one warm-up call each — so that the group's timing stays near this many seconds."""
    quality, targets = quality or {}, targets or {}
    collected = _collected.get()
    if collected is not None:
        collected.append(Case(family, case, fns, list(pyopt), list(baselines), quality, metric, device))
        return []
    warmup = 2
    if budget_s is not None:
        one_round = sum(
            time_many({k: fn}, device, repeat=1, min_time=0.0, warmup=1)[k] for k, fn in fns.items()
        )
        if one_round * (repeat + 2) > budget_s:
            repeat, min_time, warmup = max(1, min(repeat, int(budget_s / one_round))), 0.0, 0
    t = time_many(fns, device, repeat, min_time, warmup)
    rows = []
    for p in pyopt:
        for b in baselines:
            rows.append(
                Row(
                    family,
                    f"{case}: {p}",
                    t[p] * 1e3,
                    b,
                    t[b] * 1e3,
                    t[b] / t[p],
                    targets.get((p, b)),
                    device=device,
                    quality=_fmt_quality(metric, quality, p, b),
                )  # fmt: skip
            )
    return rows


def compare(
    family: str,
    case: str,
    pyopt_fn: Callable[[], object],
    baseline: str,
    baseline_fn: Callable[[], object],
    *,
    device: str = "cpu",
    target: float | None = None,
    nbytes: int | None = None,
    memcpy_target_pct: float | None = None,
    repeat: int = 10,
    min_time: float = 0.2,
) -> Row:
    """Time pyopt_fn against baseline_fn in one interleaved run; optional bytes model for GB/s."""
    collected = _collected.get()
    if collected is not None:
        collected.append(
            Case(family, case, {"pyopt": pyopt_fn, baseline: baseline_fn}, ["pyopt"], [baseline])
        )
        return Row(family, case, math.nan, baseline, math.nan, math.nan, target, device=device)
    t = time_many({"pyopt": pyopt_fn, "base": baseline_fn}, device, repeat, min_time)
    row = Row(
        family,
        case,
        t["pyopt"] * 1e3,
        baseline,
        t["base"] * 1e3,
        t["base"] / t["pyopt"],
        target,
        device=device,
    )
    if nbytes is not None:
        row.gbps = nbytes / t["pyopt"] / 1e9
        copy_gbps = nbytes / memcpy_seconds(nbytes, device, repeat) / 1e9
        row.memcpy_pct = 100.0 * row.gbps / copy_gbps
        row.memcpy_target_pct = memcpy_target_pct
    return row


def format_table(rows: list[Row]) -> str:
    quality = any(r.quality for r in rows)  # a column only where a family reports one
    head = "| family | case | pyopt ms | baseline | baseline ms | speedup | target | GB/s | % memcpy | met |"
    head += " quality (pyopt / baseline) |" if quality else ""
    lines = [head, "|" + "---|" * (11 if quality else 10)]
    for r in rows:
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        met = {True: "yes", False: "NO", None: ""}[r.met]
        tgt = "" if r.target is None else f">={r.target:g}x"
        if r.memcpy_target_pct is not None:
            tgt += f" >={r.memcpy_target_pct:g}%"
        lines.append(
            f"| {r.family} | {r.case} | {r.pyopt_ms:.3f} | {r.baseline} | {r.baseline_ms:.3f} | "
            f"{r.speedup:.2f}x | {tgt} | {fmt(r.gbps, '.1f')} | {fmt(r.memcpy_pct, '.0f')} | {met} |"
            + (f" {r.quality or ''} |" if quality else "")
        )
    return "\n".join(lines)


def plot_family(rows: list[Row], path: str) -> None:
    """One family's PNG: speedup of every case (bars), its target (black tick) and parity (1x line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 1.4 + 0.45 * len(rows)), constrained_layout=True)
    ys = list(range(len(rows)))[::-1]
    colors = [{True: "C2", False: "C3", None: "C0"}[r.met] for r in rows]
    ax.barh(ys, [r.speedup for r in rows], color=colors)
    for y, r in zip(ys, rows, strict=True):
        ax.text(r.speedup, y, f" {r.speedup:.2f}x", va="center", fontsize=8)
        if r.target is not None:
            ax.plot([r.target, r.target], [y - 0.4, y + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="gray", ls="--", lw=1)
    labels = [textwrap.fill(f"{r.case} (vs {r.baseline})", 60) for r in rows]
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlim(0, 1.15 * max([r.speedup for r in rows] + [r.target or 0 for r in rows] + [1.0]))
    ax.set_xlabel("speedup = baseline time / pyopt time   (black tick: target; green: met, red: missed)")
    ax.set_title(f"pyopt bench: {rows[0].family} on {machine_name()}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(rows: list[Row], path_stem: str, extra: dict | None = None) -> None:
    """bench/results/<machine>.json and .md, and <machine>-<family>.png per family."""
    meta = {
        "machine": machine_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(),
    }
    meta.update(extra or {})
    data = {**meta, "rows": [dataclasses.asdict(r) | {"met": r.met} for r in rows]}
    with open(path_stem + ".json", "w") as f:
        json.dump(data, f, indent=1)
    with open(path_stem + ".md", "w") as f:
        f.write(f"# pyopt benchmarks on {meta['machine']} (torch {meta['torch']})\n\n")
        f.write("Ratios are baseline time / pyopt time, both measured in the same run (median).\n\n")
        f.write(f"CPU flags: {' '.join(meta['cpu_flags']) or '(unknown)'}\n\n")
        f.write(format_table(rows) + "\n")
        families = list(dict.fromkeys(r.family for r in rows))
        for fam in families:
            png = f"{path_stem}-{fam}.png"
            plot_family([r for r in rows if r.family == fam], png)
            f.write(f"\n![{fam}]({os.path.basename(png)})\n")
