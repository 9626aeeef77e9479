"""Per-machine tuning of the int8 GEMM's AVX2 tier: a short measured search, cached per CPU model and version.

`pyopt tune` runs the search ahead of time and writes the cache; `import pyopt` applies a cached result once
(`apply_cached`, never a search: a first call must not pay seconds of timing). The cache file is
~/.cache/pyopt/tune-<cpu model>-<pyopt version>.json, or the file that PYOPT_TUNE_CACHE names.

The knobs (csrc/cpu/int8_gemm.h, struct Tuning) change speed only: every value gives the same, exact
result (tests/test_int8_tuning.py checks that against the reference). The C++ side copies the settings once
per call under a lock, so a change never reaches a call already running.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

# The knobs and the candidates the search tries, defaults first (the built-in values, tuned on a Zen 3 VM).
KNOBS: dict[str, tuple[int, ...]] = {
    "block_kib": (0, 96, 160, 384),  # packed activation rows per work item, KiB (0: half the L2 of a core)
    "dot_max_m": (32, 8, 16, 48),  # small-M dot-product path up to this many rows
    "chunk_panels": (8, 2, 4, 32),  # columns per claimed work chunk, in 16-column panels
    "prefetch": (1, 0),  # prefetch the next weight panel into L2
}
DEFAULTS = {k: v[0] for k, v in KNOBS.items()}
NAMES = tuple(KNOBS)  # the settings the C++ side takes (the search may try a subset of them)
# A candidate replaces the current value only when this much faster (the machines are noisy, often shared).
MIN_GAIN = 0.03


def _ext():
    from .ops.native import cpu_ext

    return cpu_ext()


def cache_path() -> Path:
    """Where the tuning cache of this CPU model and pyopt version lives (PYOPT_TUNE_CACHE overrides)."""
    env = os.environ.get("PYOPT_TUNE_CACHE")
    if env:
        return Path(env).expanduser()
    from . import __version__
    from .timing import cpu_model

    model = re.sub(r"[^A-Za-z0-9.+-]+", "-", cpu_model()).strip("-") or "unknown-cpu"
    return Path.home() / ".cache" / "pyopt" / f"tune-{model}-{__version__}.json"


def current() -> dict[str, int]:
    """The settings the int8 GEMM uses now (the defaults without the native extension)."""
    ext = _ext()
    return dict(ext.int8_tuning()) if ext is not None else dict(DEFAULTS)


def apply(settings: dict[str, int]) -> None:
    """Install settings (missing knobs keep their current value) for the calls that start afterwards."""
    unknown = set(settings) - set(NAMES)
    if unknown:
        raise ValueError(f"settings: unknown knob(s) {sorted(unknown)}; the knobs are {sorted(NAMES)}")
    for k, v in settings.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"settings[{k!r}] must be an int, got {type(v).__name__}")
    ext = _ext()
    if ext is None:
        return
    ext.set_int8_tuning(**{**current(), **settings})


class use_settings:
    """Context manager: the int8 GEMM runs with `settings` inside, the previous ones after."""

    def __init__(self, settings: dict[str, int]):
        self.settings = settings

    def __enter__(self):
        self._saved = current()
        apply(self.settings)
        return self

    def __exit__(self, *exc):
        apply(self._saved)


def apply_cached() -> dict[str, int] | None:
    """Apply the cached search result of this machine if there is one; never fails (warns on a bad file)."""
    path = cache_path()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        settings = {k: int(v) for k, v in data["settings"].items()}
        apply(settings)
        return settings
    except Exception as e:  # a stale or hand-edited cache must not break `import pyopt`
        warnings.warn(f"pyopt: ignoring the tuning cache {path}: {e}", RuntimeWarning, stacklevel=2)
        return None


def _workloads(quick: bool) -> dict[str, list[Callable[[], object]]]:
    """The calls each knob is timed on: the shapes where the knob decides something."""
    import torch

    torch.manual_seed(0)
    kn = 1024 if quick else 2048
    w = torch.randint(-127, 128, (kn, kn), dtype=torch.int8)
    sw = torch.rand(kn) / 100
    op = torch.ops.pyopt.int8_linear_dynamic

    def lin(m: int) -> Callable[[], object]:
        x = torch.randn(m, kn)
        return lambda: op(x, w, sw, None)

    wc = torch.randint(-127, 128, (64, 64, 3, 3), dtype=torch.int8)
    xc = torch.randn(2 if quick else 4, 64, 56, 56)
    conv = lambda: torch.ops.pyopt.int8_conv2d_dynamic(xc, wc, torch.rand(64), None, [1, 1], [1, 1], [1, 1])  # noqa: E731
    packed = [lin(64), lin(256), lin(1024 if not quick else 512), conv]
    return {
        "block_kib": packed,
        "chunk_panels": packed,
        "prefetch": packed,
        "dot_max_m": [lin(m) for m in (8, 16, 24, 32, 40, 48)],
    }


def search(quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """Coordinate search: each knob in turn over its candidates, the others fixed at the best so far.

    Each candidate's time is the time of all its workloads in a row (median of interleaved rounds,
    pyopt.timing.time_many); a candidate replaces the current value only when MIN_GAIN faster in two runs.
    Returns {"settings": ..., "measurements": {knob: {value: seconds}}}; the caller saves it.
    """
    import torch

    from .timing import time_many

    if _ext() is None:
        raise RuntimeError("pyopt tune needs the native extension pyopt._C (not built here)")
    best = dict(DEFAULTS)
    measured: dict[str, dict[str, float]] = {}
    work = _workloads(quick)
    saved = current()
    try:
        with torch.inference_mode():
            for knob, candidates in KNOBS.items():
                fns = work[knob]

                def run(value, knob=knob, fns=fns):
                    def call():
                        apply({**best, knob: value})
                        for f in fns:
                            f()

                    return call

                reps = dict(repeat=3 if quick else 5, min_time=0.05)
                t = time_many({str(v): run(v) for v in candidates}, "cpu", **reps)
                measured[knob] = t
                fastest = min(candidates, key=lambda v: t[str(v)])
                if t[str(fastest)] < t[str(best[knob])] * (1 - MIN_GAIN):
                    # confirmed by a second interleaved run of the two, so one noisy round (a shared machine)
                    # does not move a knob
                    t2 = time_many({"new": run(fastest), "old": run(best[knob])}, "cpu", **reps)
                    if t2["new"] < t2["old"] * (1 - MIN_GAIN):
                        best[knob] = fastest
                log(
                    f"{knob:13s} "
                    + "  ".join(f"{v}: {t[str(v)] * 1e3:.1f} ms" for v in candidates)
                    + f"  -> {best[knob]}"
                )
    finally:
        apply(saved)
    return {"settings": best, "measurements": measured}


def save(result: dict, path: Path | None = None) -> Path:
    """Write a search result (with the machine it was measured on) to the cache file."""
    from . import __version__
    from .timing import cpu_model

    path = path or cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"cpu_model": cpu_model(), "pyopt_version": __version__, **result}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path
