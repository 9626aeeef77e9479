"""`pyopt demo` smoke test: a tiny CNN, one epoch, every variant; checks results.json and the reloads."""

import json

from pyopt import cli
from pyopt.cli import demo

VARIANT_KEYS = {
    "name",
    "accuracy",
    "size_bytes",
    "latency_ms_b1",
    "latency_ms_b256",
    "speedup_b1",
    "speedup_b256",
    "reload_identical",
}


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo-out"
    rc = cli.main(["demo", "--smoke", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-2000:]

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"machine", "torch", "pyopt", "variants", "parallel"}
    par = results["parallel"]  # the pruned fine-tune on 2 ranks, data- and model-parallel
    assert par["ddp_matches"] and par["tp_matches"], par
    assert par["single_ms"] > 0 and par["ddp_ms"] > 0 and par["tp_ms"] > 0
    assert all(isinstance(results[k], str) and results[k] for k in ("machine", "torch", "pyopt"))
    assert [v["name"] for v in results["variants"]] == list(demo.VARIANTS)
    for v in results["variants"]:
        assert set(v) == VARIANT_KEYS, v["name"]
        assert 0.0 <= v["accuracy"] <= 1.0
        assert isinstance(v["size_bytes"], int) and v["size_bytes"] > 0
        assert v["latency_ms_b1"] > 0 and v["latency_ms_b256"] > 0
        assert v["speedup_b1"] > 0 and v["speedup_b256"] > 0
        assert v["reload_identical"] is True, f"{v['name']}: pyopt.load did not reproduce the outputs"
    float32 = results["variants"][0]
    assert float32["speedup_b1"] == 1.0 and float32["speedup_b256"] == 1.0
    # int8 weights and 1-bit weights must make smaller files than float32, even for a tiny model
    sizes = {v["name"]: v["size_bytes"] for v in results["variants"]}
    assert sizes["int8"] < sizes["float32"] and sizes["binary"] < sizes["float32"]

    md = (out / "results.md").read_text()
    assert "| float32 |" in md and "Targets:" in md
    assert (out / "tradeoffs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| pruned-90+int8 |" in printed.out  # the terminal table
    assert "| model parallel (fc1 colwise + fc2 rowwise, 2 ranks) |" in md


def test_demo_rejects_unknown_variant(tmp_path, capsys):
    rc = cli.main(["demo", "--smoke", "--out", str(tmp_path), "--variants", "float32,nonsense"])
    assert rc == 2
    assert "unknown variant" in capsys.readouterr().err
