"""The bench harness's group timing (compare_many) and its pytest-benchmark front end (`pytest bench/
--benchmark-only`): groups of pyopt + baselines, ratios from the same run in the JSON and the terminal."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import harness  # noqa: E402


def test_compare_many_rows_and_collecting():
    fns = {"base": lambda: sum(range(2000)), "fast": lambda: 1, "other": lambda: sum(range(10))}
    rows = harness.compare_many(
        "fam", "case", fns, ["fast", "other"], ["base"], quality={"fast": 0.99, "base": 1.0}, metric="cos",
        targets={("fast", "base"): 1.0}, repeat=3, min_time=0.0,
    )  # fmt: skip
    assert [(r.case, r.baseline) for r in rows] == [("case: fast", "base"), ("case: other", "base")]
    assert rows[0].speedup > 0 and rows[0].target == 1.0 and rows[0].quality == "cos 0.9900 / 1.0000"
    assert rows[1].quality is None and rows[1].target is None
    table = harness.format_table(rows)
    assert "quality (pyopt / baseline)" in table and "cos 0.9900 / 1.0000" in table
    with harness.collecting() as cases:
        assert harness.compare_many("fam", "g", fns, ["fast"], ["base"]) == []
        row = harness.compare("fam", "single", fns["fast"], "base", fns["base"])
    assert math.isnan(row.speedup)
    assert [(c.case, sorted(c.fns)) for c in cases] == [
        ("g", ["base", "fast", "other"]),
        ("single", ["base", "pyopt"]),
    ]


@pytest.mark.slow
def test_pytest_benchmark_front_end(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, "-m", "pytest", "bench", "--benchmark-only", "--bench-quick", "--bench-family", "sgd",
        "--benchmark-min-rounds=1", "--benchmark-max-time=0.001", "--benchmark-warmup=off", "-q",
        "-p", "no:cacheprovider", f"--benchmark-json={out}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pyopt ratios (baseline median / pyopt median, this run)" in proc.stdout
    data = json.loads(out.read_text())
    groups = {b["group"] for b in data["benchmarks"]}
    assert groups and all(g.startswith("sgd: ") for g in groups)
    roles = {(b["group"], b["extra_info"]["role"]) for b in data["benchmarks"]}
    assert all(
        (g, "pyopt") in roles and (g, "baseline") in roles for g in groups
    )  # each group: pyopt + baselines
    assert data["pyopt_ratios"] and all(r["speedup"] > 0 for r in data["pyopt_ratios"])
