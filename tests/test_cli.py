"""CLI tests: `pyopt compress` (recipes and every error message) and `pyopt bench --quick`."""

import json
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from tolerances import tol

import pyopt
from pyopt import cli

USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 16))  # 256x256: big enough for int8 to pay

    def make_other():
        return nn.Sequential(nn.Linear(256, 96), nn.ReLU(), nn.Linear(96, 16))

    def make_odd():  # in_features 30: not a multiple of 4, so no 2:4 pattern fits
        return nn.Sequential(nn.Linear(30, 16))

    def make_no_layers():
        return nn.Sequential(nn.ReLU(), nn.Dropout())

    def not_a_module():
        return 42

    def broken():
        raise RuntimeError("boom")

    NOT_CALLABLE = 3

    def score(model):
        x = torch.randn(32, 256, generator=torch.Generator().manual_seed(0))
        return {"mean_output": float(model(x).mean())}
    """
)


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's package on sys.path (usermodels.py) and its trained weights in both file formats."""
    (tmp_path / "usermodels.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("usermodels", None)
    mod = importlib.import_module("usermodels")
    state = mod.make().state_dict()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    save_file(mod.make_odd().state_dict(), str(tmp_path / "odd.safetensors"))
    save_file({}, str(tmp_path / "empty.safetensors"))
    return tmp_path


def compress(capsys, *argv):
    rc = cli.main(["compress", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def expect_error(capsys, fragment, *argv):
    rc, _, err = compress(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyopt compress: error: "), err
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("usermodels", "expected 'package.module:function'"),
        ("usermodels:", "expected 'package.module:function'"),
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("usermodels:nope", "has no attribute 'nope'"),
        ("usermodels:NOT_CALLABLE", "is not callable"),
        ("usermodels:not_a_module", "returned int, not an nn.Module"),
        ("usermodels:broken", "the factory raised RuntimeError: boom"),
    ],
)
def test_compress_bad_factory(user, capsys, spec, fragment):
    expect_error(
        capsys,
        fragment,
        "--model",
        spec,
        "--weights",
        user / "w.safetensors",
        "--quantize",
        "dynamic",
        "-o",
        user / "o.safetensors",
    )


def test_compress_bad_weights(user, capsys):
    args = ["--model", "usermodels:make_other", "--quantize", "dynamic", "-o", user / "o.safetensors"]
    expect_error(
        capsys, "shape mismatch 0.weight (256, 256) vs model (96, 256)", *args, "--weights", user / "w.pt"
    )
    expect_error(
        capsys, "missing 0.weight, 0.bias, 2.weight (+1 more)", *args, "--weights", user / "empty.safetensors"
    )
    expect_error(capsys, "no such file", *args, "--weights", user / "missing.safetensors")
    (user / "junk.pt").write_bytes(b"not a checkpoint")
    expect_error(
        capsys, "not a safetensors file or a weights-only state_dict", *args, "--weights", user / "junk.pt"
    )
    assert not (user / "o.safetensors").exists()


def test_compress_bad_recipe(user, capsys):
    base = ["--model", "usermodels:make", "--weights", user / "w.safetensors", "-o", user / "o.safetensors"]
    expect_error(capsys, "nothing to do", *base)
    expect_error(capsys, "must be in [0, 1)", *base, "--prune", "1.5")
    expect_error(capsys, "needs --prune", *base, "--pattern", "2:4", "--quantize", "dynamic")
    expect_error(capsys, "--calib", *base, "--quantize", "dynamic", "--calib", user / "none.pt")
    expect_error(
        capsys, "has no attribute 'nope'", *base, "--quantize", "dynamic", "--eval", "usermodels:nope"
    )
    no_layers = ["--model", "usermodels:make_no_layers", "--weights", user / "empty.safetensors"]
    expect_error(
        capsys,
        "no nn.Linear or nn.Conv2d layer",
        *no_layers,
        "--quantize",
        "dynamic",
        "-o",
        user / "o.safetensors",
    )
    # layers that cannot take the option: too small for int8 to pay; 2:4 needs in_features divisible by 4
    expect_error(
        capsys, "no layer could be quantised (0: too small", "--model", "usermodels:make_odd",
        "--weights", user / "odd.safetensors", "-o", user / "o.safetensors", "--quantize", "dynamic",
    )  # fmt: skip
    odd = [
        "--model",
        "usermodels:make_odd",
        "--weights",
        user / "odd.safetensors",
        "-o",
        user / "o.safetensors",
    ]
    expect_error(capsys, "--prune/--quantize: ", *odd, "--prune", "0.5", "--pattern", "2:4")
    with pytest.raises(SystemExit) as e:  # argparse: an unknown mode
        cli.main(["compress", *map(str, base), "--quantize", "int3"])
    assert e.value.code == 2


def apply_recipe_in_process(recipe: list[str]):
    """What `compress` should have produced, built with the Python API."""
    import usermodels

    model = usermodels.make()
    args = dict(zip(recipe[::2], recipe[1::2], strict=True))
    if "--prune" in args:
        model, _ = pyopt.prune(model, float(args["--prune"]), pattern=args.get("--pattern", "unstructured"))
        model, _ = pyopt.sparsify(model)
    if "--quantize" in args:
        model, _ = pyopt.quantize(model, mode=args["--quantize"])
    return model.eval()


@pytest.mark.parametrize(
    "recipe, new_layer",
    [
        (["--quantize", "dynamic"], "Int8Linear"),
        (["--quantize", "weight_only"], "Int8Linear"),
        (["--quantize", "binary"], "BinaryLinear"),
        (["--prune", "0.9"], "SparseLinear"),
        (["--prune", "0.5", "--pattern", "2:4"], "SparseLinear"),
        # csr -> csr_int8, or, where the format choice kept the layer dense, Int8Linear
        (["--prune", "0.9", "--quantize", "dynamic"], ("SparseLinear", "Int8Linear")),
    ],
    ids=lambda r: " ".join(r) if isinstance(r, list) else r,
)
def test_compress_recipes(user, capsys, recipe, new_layer):
    import usermodels

    out = user / "small.safetensors"
    weights = user / ("w.pt" if "binary" in recipe else "w.safetensors")
    rc, printed, err = compress(
        capsys,
        "--model",
        "usermodels:make",
        "--weights",
        weights,
        *recipe,
        "-o",
        out,
        "--eval",
        "usermodels:score",
    )
    assert rc == 0, err
    assert "eval before: mean_output" in printed and "eval after: mean_output" in printed
    assert f"saved {out}" in printed
    reloaded = pyopt.load(usermodels.make(), str(out)).eval()
    assert type(reloaded[0]).__name__ in (new_layer if isinstance(new_layer, tuple) else (new_layer,))
    expected = apply_recipe_in_process(recipe)
    x = torch.randn(5, 256)
    with torch.inference_mode():
        got, want = reloaded(x), expected(x)
    if "--prune" in recipe:  # the dispatcher may pick another format (dense/CSR) in each process
        torch.testing.assert_close(got, want, **tol(torch.float32))
    else:
        assert torch.equal(got, want)
        assert out.stat().st_size < (user / "w.safetensors").stat().st_size


def test_compress_channel_pruning_reloads_into_the_factory(user, capsys):
    import usermodels

    out = user / "small.safetensors"
    rc, printed, err = compress(
        capsys, "--model", "usermodels:make", "--weights", user / "w.safetensors", "--prune", "0.5",
        "--pattern", "channel", "-o", out,
    )  # fmt: skip
    assert rc == 0, err
    assert "reload with pyopt.load(make()" in printed and "resizes make()'s layers" in printed
    assert out.stat().st_size < (user / "w.safetensors").stat().st_size
    reloaded = pyopt.load(usermodels.make(), str(out))
    assert reloaded[0].weight.shape == (128, 256) and reloaded[2].weight.shape == (16, 128)


RESIDUAL_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.a, self.b, self.out = nn.Linear(12, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 4)

        def forward(self, x):
            h = self.inp(x)
            h = h + self.b(torch.relu(self.a(h)))
            return self.out(h)

    def make():
        torch.manual_seed(2)
        return Res()
    """
)


def test_compress_channel_pruning_traces_other_models(user, capsys):
    (user / "resmodels.py").write_text(RESIDUAL_MODULE)
    import resmodels

    save_file(resmodels.make().state_dict(), str(user / "res.safetensors"))
    base = [
        "--model",
        "resmodels:make",
        "--weights",
        user / "res.safetensors",
        "--prune",
        "0.5",
        "--pattern",
        "channel",
    ]
    expect_error(capsys, "pass example_inputs=", *base, "-o", user / "r.safetensors")
    expect_error(capsys, "--input-shape '2,x'", *base, "--input-shape", "2,x", "-o", user / "r.safetensors")
    rc, printed, err = compress(capsys, *base, "--input-shape", "2,12", "-o", user / "r.safetensors")
    assert rc == 0, err and "width" in printed
    torch.save(torch.randn(3, 12), user / "calib.pt")
    rc, _, err = compress(capsys, *base, "--calib", user / "calib.pt", "-o", user / "r2.safetensors")
    assert rc == 0, err
    reloaded = pyopt.load(resmodels.make(), str(user / "r.safetensors"))
    assert (reloaded.inp.out_features, reloaded.a.out_features, reloaded.out.in_features) == (16, 16, 16)


def test_compress_calib_is_accepted_and_explained(user, capsys):
    torch.save(torch.randn(8, 256), user / "calib.pt")
    rc, printed, err = compress(
        capsys,
        "--model",
        "usermodels:make",
        "--weights",
        user / "w.safetensors",
        "--quantize",
        "dynamic",
        "--calib",
        user / "calib.pt",
        "-o",
        user / "o.safetensors",
    )
    assert rc == 0, err
    assert "--calib is not needed" in printed


def test_bench_quick_writes_results_and_plots(tmp_path, capsys):
    """`pyopt bench --quick` end to end on one real family (sgd: a few seconds; all families take minutes)."""
    stem = tmp_path / "results" / "here"
    assert cli.main(["bench", "--quick", "--op", "sgd", "--out", str(stem)]) == 0
    printed = capsys.readouterr()
    assert "(1/1) sgd" in printed.err and "| sgd |" in printed.out
    data = json.loads(stem.with_suffix(".json").read_text())
    assert data["quick"] is True and data["rows"] and {r["family"] for r in data["rows"]} == {"sgd"}
    assert all(r["speedup"] > 0 and r["baseline"] for r in data["rows"])
    assert "![sgd](here-sgd.png)" in stem.with_suffix(".md").read_text()
    assert (tmp_path / "results" / "here-sgd.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_unknown_family(tmp_path, capsys):
    assert cli.main(["bench", "--quick", "--op", "no_such_family", "--out", str(tmp_path / "x")]) == 1
    assert "no bench/bench_no_such_family.py" in capsys.readouterr().err
