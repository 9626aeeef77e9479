"""`pyopt compress` and the model-level API as a new user with a real project meets them: the current folder
importable, harmless checkpoint buffers, --non-strict, pruned-then-quantised layers, exit status 2 when
nothing converts, loud --eval warnings; sparse files never larger than dense; sparsify's batch-size hint."""

import os
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import pyopt
from pyopt import cli
from pyopt.nn import SparseLinear
from pyopt.nn.sparse_format import DispatchCache

PKG = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(3)
            self.fc1 = nn.Linear(256, 256)
            self.fc2 = nn.Linear(256, 128)
            self.register_buffer("position_ids", torch.arange(8), persistent=False)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    def make_net():
        return Net()

    def tiny():
        return nn.Sequential(nn.Linear(30, 16))

    def score(model):
        x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
        return float(model(x).abs().mean())
    """
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's project folder holding the package mypkg/, *not* on sys.path, as the current directory."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(PKG)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd(), str(tmp_path))])
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, name)
    torch.manual_seed(3)
    state = {k: v.clone() for k, v in _net().state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    # an older transformers-style checkpoint: also carries the non-persistent buffer
    save_file({**state, "position_ids": torch.arange(8)}, str(tmp_path / "hf.safetensors"))
    save_file({k: v for k, v in state.items() if k != "fc2.bias"}, str(tmp_path / "partial.safetensors"))
    save_file(nn.Sequential(nn.Linear(30, 16)).state_dict(), str(tmp_path / "tiny.safetensors"))
    return tmp_path


def _net():
    ns: dict = {}
    exec(PKG, ns)  # the same definition, without importing the package
    return ns["make_net"]()


def run(capsys, *argv):
    rc = cli.main(["compress", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_current_folder_is_importable(project, capsys):
    rc, out, err = run(
        capsys, "--model", "mypkg.models:make_net", "--weights", "w.safetensors", "--quantize", "dynamic",
        "-o", "small.safetensors",
    )  # fmt: skip
    assert rc == 0, err
    assert (project / "small.safetensors").exists()


def test_harmless_buffers_and_non_strict(project, capsys):
    base = ["--model", "mypkg.models:make_net", "--quantize", "dynamic", "-o", "o.safetensors"]
    rc, out, err = run(capsys, *base, "--weights", "hf.safetensors")
    assert rc == 0, err
    assert "ignored position_ids (buffers the model recomputes itself)" in out
    rc, out, err = run(capsys, *base, "--weights", "partial.safetensors")
    assert rc == 2 and "missing fc2.bias" in err and "--non-strict" in err
    rc, out, err = run(capsys, *base, "--weights", "partial.safetensors", "--non-strict")
    assert rc == 0, err
    assert "warning: --non-strict" in out and "missing fc2.bias" in out


def test_prune_then_quantize_quantises_and_nothing_converted_exits_2(project, capsys):
    rc, out, err = run(
        capsys, "--model", "mypkg.models:make_net", "--weights", "w.safetensors", "--prune", "0.5",
        "--quantize", "dynamic", "-o", "pq.safetensors",
    )  # fmt: skip
    assert rc == 0, err
    sys.path.insert(0, str(project))
    from mypkg.models import make_net

    fresh = pyopt.load(make_net(), "pq.safetensors")
    kinds = {type(fresh.fc1).__name__, getattr(fresh.fc1, "format", "")}
    # whatever format the choice kept, the layer is int8 now: dense -> Int8Linear, csr -> csr_int8
    assert "Int8Linear" in kinds or "csr_int8" in kinds, kinds
    assert (project / "pq.safetensors").stat().st_size < (project / "w.safetensors").stat().st_size / 2
    rc, out, err = run(
        capsys, "--model", "mypkg.models:tiny", "--weights", "tiny.safetensors", "--prune", "0.5",
        "--quantize", "dynamic", "-o", "t.safetensors",
    )  # fmt: skip
    assert rc == 2 and "no layer could be quantised" in err and "too small" in err
    assert not (project / "t.safetensors").exists()


def test_a_recipe_that_wrecks_eval_says_so(project, capsys):
    rc, out, err = run(
        capsys, "--model", "mypkg.models:make_net", "--weights", "w.safetensors", "--prune", "0.97",
        "-o", "wreck.safetensors", "--eval", "mypkg.models:score",
    )  # fmt: skip
    assert rc == 0
    assert "WARNING: this recipe changed --eval by more than 10%" in err and "metric" in err
    rc, out, err = run(
        capsys, "--model", "mypkg.models:make_net", "--weights", "w.safetensors", "--quantize", "weight_only",
        "-o", "fine.safetensors", "--eval", "mypkg.models:score",
    )  # fmt: skip
    assert rc == 0 and "WARNING" not in err


def test_quantize_api_warns_when_nothing_converts():
    with pytest.warns(UserWarning, match="converted no layer.*too small"):
        pyopt.quantize(nn.Sequential(nn.Linear(30, 16)), mode="dynamic")


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(16, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 192)
        self.out = nn.Linear(192, 10)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.out(torch.relu(self.fc(nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))))


def data_bytes(path) -> int:
    raw = path.read_bytes()
    return len(raw) - 8 - int.from_bytes(raw[:8], "little")


@pytest.mark.parametrize("amount", [0.1, 0.3, 0.5, 0.9])
def test_sparse_file_is_never_larger_than_dense(tmp_path, amount):
    dense = ConvNet()
    pyopt.save(dense, tmp_path / "dense.safetensors")
    model, _ = pyopt.prune(ConvNet(), amount)
    model, _ = pyopt.sparsify(model, cache=DispatchCache())
    pyopt.save(model, tmp_path / "sparse.safetensors")
    # the tensor data (the header adds each pyopt layer's config, a few hundred bytes per layer)
    assert data_bytes(tmp_path / "sparse.safetensors") <= data_bytes(tmp_path / "dense.safetensors")
    # a compressed conv keeps no mask in the file: its zeros are the mask, rebuilt on load
    fresh = pyopt.load(ConvNet(), tmp_path / "sparse.safetensors")
    assert torch.equal(fresh.c1.mask, model.c1.mask)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("amount", [0.5, 0.9])
def test_pruned_convs_quantise_dense(amount):
    model, _ = pyopt.prune(ConvNet(), amount)
    model, _ = pyopt.sparsify(model, cache=DispatchCache())
    model, report = pyopt.quantize(model, mode="dynamic", min_weights=0)
    rows = {r["layer"]: r for r in report}
    assert type(model.c1).__name__ == "Int8Conv2d" and rows["c1"]["action"] == "quantized"
    assert "stored dense" in rows["c1"]["reason"]


def test_sparsify_calibrates_at_the_batch_sizes_it_is_told():
    def pruned():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(96, 128), nn.ReLU(), nn.Linear(128, 64))
        return pyopt.prune(m, 0.8)[0]

    model, _ = pyopt.sparsify(pruned(), cache=DispatchCache(), expected_m=[3, 40])
    for layer in (model[0], model[2]):
        if layer.format != "dense" or "would store more" not in layer.reason:
            assert set(layer.decision.times_ms["dense"]) == {3, 40}
    x = torch.randn(2, 7, 96)  # batch 2 x 7 tokens: each layer sees M = 14 rows
    model, _ = pyopt.sparsify(pruned(), cache=DispatchCache(), example_inputs=x)
    assert set(model[0].decision.times_ms["dense"]) == {14} and set(model[2].decision.times_ms["dense"]) == {
        14
    }
    with pytest.raises(ValueError, match="expected_m must be a positive int"):
        pyopt.sparsify(pruned(), expected_m=0)
    with pytest.raises(ValueError, match="not both"):
        pyopt.sparsify(pruned(), expected_m=4, example_inputs=x)
    assert isinstance(model[0], SparseLinear)
