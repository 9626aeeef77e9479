"""pyopt.tuning and `pyopt tune`: the int8 GEMM's knobs change speed only (every setting is bit-exact with the
reference), bad settings raise, the cache round-trips and is applied at import."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import isa_params

import pyopt
from pyopt import tuning
from pyopt._rules import quantize_rows_symmetric

pytestmark = pytest.mark.skipif(pyopt.ops.native.cpu_ext() is None, reason="needs the native extension")

SETTINGS = [  # extremes of every knob, and mixes of them
    dict(tuning.DEFAULTS),
    {"block_kib": 8, "dot_max_m": 0, "chunk_panels": 1, "prefetch": 0},
    {"block_kib": 16, "dot_max_m": 256, "chunk_panels": 3, "prefetch": 1},
    {"block_kib": 4096, "dot_max_m": 5, "chunk_panels": 4096, "prefetch": 1},
]


def _run(op, backend, *args):
    with pyopt.use_backend(backend):
        return getattr(torch.ops.pyopt, op)(*args)


@pytest.mark.parametrize("isa", [p for p in isa_params() if p.values[0] != "scalar"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(str(v) for v in s.values()))
@pytest.mark.parametrize(("m", "k", "n"), [(1, 64, 7), (5, 300, 33), (40, 1000, 17), (700, 129, 50)])
def test_linear_bit_exact_for_any_setting(isa, settings, m, k, n):
    x = torch.randn(m, k) * 3
    w, s = quantize_rows_symmetric(torch.randn(n, k))
    w[0, 0] = -128
    b = torch.randn(n)
    ref = _run("int8_linear_dynamic", "reference", x, w, s, b)
    before = tuning.current()
    with tuning.use_settings(settings), pyopt.use_isa(isa):
        assert tuning.current() == settings
        assert torch.equal(_run("int8_linear_dynamic", "cpu", x, w, s, b), ref)
    assert tuning.current() == before


@pytest.mark.parametrize("settings", SETTINGS[1:], ids=lambda s: "-".join(str(v) for v in s.values()))
def test_conv_bit_exact_for_any_setting(settings):
    x = torch.randn(3, 19, 12, 17)
    w, s = quantize_rows_symmetric(torch.randn(10, 19 * 9))
    args = (x, w.view(10, 19, 3, 3), s, None, [1, 1], [1, 1], [1, 1])
    ref = _run("int8_conv2d_dynamic", "reference", *args)
    with tuning.use_settings(settings):
        assert torch.equal(_run("int8_conv2d_dynamic", "cpu", *args), ref)


@pytest.mark.parametrize(
    ("settings", "exc", "match"),
    [
        ({"block_kib": 3}, ValueError, "block_kib"),
        ({"dot_max_m": -1}, ValueError, "dot_max_m"),
        ({"chunk_panels": 0}, ValueError, "chunk_panels"),
        ({"prefetch": 2}, ValueError, "prefetch"),
        ({"tile": 4}, ValueError, "unknown knob"),
        ({"prefetch": 1.0}, TypeError, "prefetch"),
    ],
)
def test_bad_settings_raise_and_change_nothing(settings, exc, match):
    before = tuning.current()
    with pytest.raises(exc, match=match):
        tuning.apply(settings)
    assert tuning.current() == before


def test_cache_roundtrip_and_import_applies_it(tmp_path, monkeypatch):
    path = tmp_path / "tune.json"
    monkeypatch.setenv("PYOPT_TUNE_CACHE", str(path))
    assert tuning.cache_path() == path
    assert tuning.apply_cached() is None  # no file: nothing applied
    want = {"block_kib": 96, "dot_max_m": 16, "chunk_panels": 4, "prefetch": 0}
    tuning.save({"settings": want, "measurements": {}})
    data = json.loads(path.read_text())
    assert data["settings"] == want and data["pyopt_version"] == pyopt.__version__
    # a fresh interpreter applies it at import
    code = "import pyopt, pyopt.tuning as t; print(sorted(t.current().items()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(want.items()))
    # a broken file warns and is ignored
    path.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="tuning cache"):
        assert tuning.apply_cached() is None


def test_default_cache_path_names_cpu_and_version(monkeypatch):
    monkeypatch.delenv("PYOPT_TUNE_CACHE", raising=False)
    p = tuning.cache_path()
    assert (
        p.parent.name == "pyopt"
        and p.name.startswith("tune-")
        and p.name.endswith(f"-{pyopt.__version__}.json")
    )


def test_cli_tune_quick_writes_cache(tmp_path, monkeypatch):
    # the search itself, on the smallest shapes: its result is a valid setting from the candidates
    monkeypatch.setattr(tuning, "KNOBS", {"dot_max_m": (32, 8), "prefetch": (1, 0)})
    monkeypatch.setattr(tuning, "DEFAULTS", {"dot_max_m": 32, "prefetch": 1})
    before = tuning.current()
    from pyopt.cli import main

    out = tmp_path / "t.json"
    assert main(["tune", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["dot_max_m"] in (32, 8) and data["settings"]["prefetch"] in (1, 0)
    assert set(data["measurements"]) == {"dot_max_m", "prefetch"}
    tuning.apply(before)
