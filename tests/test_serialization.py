"""pyopt.save / pyopt.load: bit-identical round trips into a float model, clear errors for bad files."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import pyopt
from pyopt.nn import BinaryLinear, get_param_mask


def mlp():
    return nn.Sequential(nn.Linear(40, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 5))


def read(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


@pytest.fixture
def saved(tmp_path):
    model, _ = pyopt.quantize(mlp(), mode="binary", min_weights=0, exclude="4")
    path = tmp_path / "model.safetensors"
    pyopt.save(model, path)
    return model, path


def test_roundtrip_into_float_model_is_bit_identical(saved):
    model, path = saved
    fresh = mlp()  # other random weights, float layers
    pyopt.load(fresh, path)
    assert (
        isinstance(fresh[0], BinaryLinear)
        and isinstance(fresh[2], BinaryLinear)
        and type(fresh[4]) is nn.Linear
    )
    x = torch.randn(7, 40)
    assert torch.equal(fresh(x), model(x))
    meta, tensors = read(path)
    assert meta["format"] == "pyopt" and tensors["0.packed_weight"].dtype == torch.uint8
    assert json.loads(meta["modules"])["2"] == {"type": "BinaryLinear", "config": model[2].extra_config()}


def test_load_into_already_converted_model(saved):
    model, path = saved
    other, _ = pyopt.quantize(mlp(), mode="binary", min_weights=0, exclude="4")
    pyopt.load(other, path)
    x = torch.randn(3, 40)
    assert torch.equal(other(x), model(x))


def test_binary_activations_config_roundtrip(tmp_path):
    model = nn.Sequential(BinaryLinear.from_float(nn.Linear(33, 12), binary_activations=True))
    pyopt.save(model, tmp_path / "m.safetensors")
    fresh = pyopt.load(nn.Sequential(nn.Linear(33, 12)), tmp_path / "m.safetensors")
    assert fresh[0].binary_activations
    x = torch.randn(4, 33)
    assert torch.equal(fresh(x), model(x))


@pytest.mark.skipif(
    not hasattr(pyopt.nn, "Int8Linear"), reason="pyopt.nn.Int8Linear is not in this build yet"
)
@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_int8_roundtrip(tmp_path, mode):
    model, _ = pyopt.quantize(mlp(), mode=mode, min_weights=0)
    pyopt.save(model, tmp_path / "m.safetensors")
    fresh = pyopt.load(mlp(), tmp_path / "m.safetensors")
    assert type(fresh[0]).__name__ == "Int8Linear"
    x = torch.randn(5, 40)
    assert torch.equal(fresh(x), model(x))


@pytest.mark.skipif(
    not hasattr(pyopt.nn, "SparseLinear"), reason="pyopt.nn.SparseLinear is not in this build yet"
)
def test_sparse_roundtrip(tmp_path):
    lin = nn.Linear(40, 30)
    model = nn.Sequential(pyopt.nn.SparseLinear.from_dense(lin, torch.rand(30, 40) > 0.7))
    pyopt.save(model, tmp_path / "m.safetensors")
    fresh = pyopt.load(nn.Sequential(nn.Linear(40, 30)), tmp_path / "m.safetensors")
    x = torch.randn(5, 40)
    assert torch.equal(fresh(x), model(x))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight  # tied: one tensor under two keys
        base = torch.randn(16, 8)
        self.register_buffer("transposed", base.t())  # non-contiguous
        self.register_buffer("half_view", base[:4])  # shares storage with `transposed`, another view

    def forward(self, x):
        return self.b(self.a(x)) + self.transposed.sum() + self.half_view.sum()


def test_tied_shared_and_noncontiguous(tmp_path):
    model = Tied()
    pyopt.save(model, tmp_path / "t.safetensors")
    meta, tensors = read(tmp_path / "t.safetensors")
    assert json.loads(meta["aliases"]) == {"b.weight": "a.weight"}
    fresh = pyopt.load(Tied(), tmp_path / "t.safetensors")
    assert fresh.b.weight is fresh.a.weight
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = torch.randn(2, 16)
    assert torch.equal(fresh(x), model(x))


def test_truncated_file(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        pyopt.load(mlp(), bad)
    bad.write_bytes(data[:5])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        pyopt.load(mlp(), bad)


def test_tampered_tensor_bytes(saved, tmp_path):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the last tensor's data
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        pyopt.load(mlp(), bad)


def rewrite(path, out, meta_edit=None, tensor_edit=None):
    """A consistent file (valid checksum, recomputed over the edited metadata and tensors)."""
    from pyopt.io.file_checks import digest

    meta, tensors = read(path)
    if tensor_edit:
        tensor_edit(tensors)
    if meta_edit:
        meta_edit(meta)
    meta["sha256"] = digest(meta, tensors)
    save_file(tensors, str(out), metadata=meta)
    return out


def test_unknown_module_type(saved, tmp_path):
    _, path = saved

    def edit(meta):
        mods = json.loads(meta["modules"])
        mods["0"]["type"] = "Int3Linear"
        meta["modules"] = json.dumps(mods)

    with pytest.raises(ValueError, match="unknown module type 'Int3Linear'"):
        pyopt.load(mlp(), rewrite(path, tmp_path / "x.safetensors", meta_edit=edit))


def test_missing_key(saved, tmp_path):
    _, path = saved
    bad = rewrite(path, tmp_path / "x.safetensors", tensor_edit=lambda t: t.pop("2.alpha"))
    with pytest.raises(ValueError, match=r"missing keys \['2.alpha'\]"):
        pyopt.load(mlp(), bad)


def test_shape_mismatch_and_wrong_architecture(saved):
    _, path = saved
    wider = nn.Sequential(nn.Linear(40, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 6))
    with pytest.raises(ValueError, match=r"'4.bias' is torch.float32\[5\] in the file"):
        pyopt.load(wider, path)
    assert type(wider[0]) is nn.Linear  # a failed load leaves the model as it was
    with pytest.raises(ValueError, match="no submodule '2'"):
        pyopt.load(nn.Sequential(nn.Linear(40, 96)), path)


def test_not_a_pyopt_file(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not written by pyopt.save"):
        pyopt.load(mlp(), tmp_path / "plain.safetensors")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        pyopt.load(mlp(), tmp_path / "pickle.pt")
    with pytest.raises(TypeError, match="model"):
        pyopt.save("x", tmp_path / "y.safetensors")


def test_sparse_csr_int8_roundtrip(tmp_path):
    """A pruned, compressed, int8-quantised layer (csr_int8) saves and loads bit-exactly into a float model."""
    lin = nn.Linear(40, 30)
    layer = pyopt.nn.SparseLinear.from_dense(lin, torch.rand(30, 40) > 0.7).compress(format="csr")
    model = nn.Sequential(layer.quantize_int8())
    pyopt.save(model, tmp_path / "m.safetensors")
    fresh = pyopt.load(nn.Sequential(nn.Linear(40, 30)), tmp_path / "m.safetensors")
    assert isinstance(fresh[0], pyopt.nn.SparseLinear) and fresh[0].format == "csr_int8"
    for name in ("crow_indices", "col_indices", "values", "row_scales"):
        assert torch.equal(getattr(fresh[0], name), getattr(layer, name))
    assert fresh[0].values.dtype == torch.int8
    x = torch.randn(5, 40)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def _low_precision_layers(dtype):
    """One of each kind of converted layer, in a model that was cast to `dtype` before conversion."""

    def sparse(fmt):
        mask = torch.rand(30, 40) > 0.7
        if fmt == "bsr":  # whole 2 x 8 blocks
            mask = torch.rand(15, 5).repeat_interleave(2, 0).repeat_interleave(8, 1) > 0.5
        layer = pyopt.nn.SparseLinear.from_dense(nn.Linear(40, 30).to(dtype), mask)
        if fmt == "csr_int8":
            layer.compress(format="csr").quantize_int8()
        elif fmt:
            layer.compress(format=fmt, block=(2, 8) if fmt == "bsr" else None)
        return nn.Sequential(layer)

    layers = {fmt or "masked": sparse(fmt) for fmt in (None, "csr", "bsr", "csr_int8")}
    for mode in ("dynamic", "weight_only", "binary"):
        layers[mode], _ = pyopt.quantize(nn.Sequential(nn.Linear(40, 30)).to(dtype), mode=mode, min_weights=0)
    return layers


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_roundtrip(tmp_path, dtype):
    """A bf16/fp16 model's converted layers load into a model of that dtype: from_config builds float32
    layers, so load gives them the precision of the layers they replace (the int8 scales stay float32)."""
    x = torch.randn(5, 40, dtype=dtype)
    for kind, model in _low_precision_layers(dtype).items():
        path = tmp_path / f"{kind}.safetensors"
        pyopt.save(model, path)
        fresh = pyopt.load(nn.Sequential(nn.Linear(40, 30)).to(dtype), path)
        assert type(fresh[0]) is type(model[0]), kind
        want = model.state_dict()
        assert fresh.state_dict().keys() == want.keys(), kind
        for name, a in fresh.state_dict().items():
            assert a.dtype == want[name].dtype and torch.equal(a, want[name]), (kind, name)
        with torch.no_grad():
            assert torch.equal(fresh(x), model(x)), kind
        if kind == "masked":  # the mask FusedSGD reads is the loaded layer's own mask buffer
            assert get_param_mask(fresh[0].weight) is fresh[0].mask
        float_model = nn.Sequential(nn.Linear(40, 30))
        if kind in ("dynamic", "weight_only", "binary"):  # float32 scales and bias only: precision-free
            assert torch.equal(pyopt.load(float_model, path)[0](x.float()), model[0](x.float())), kind
        else:  # into a float32 model: the same error as for a plain layer in the wrong precision
            with pytest.raises(ValueError, match=f"{dtype}.* in the file but torch.float32"):
                pyopt.load(float_model, path)


def test_meta_model_and_directory_path(saved, tmp_path):
    _, path = saved
    with torch.device("meta"):
        model = mlp()
    with pytest.raises(ValueError, match="meta device"):
        pyopt.load(model, path)
    with pytest.raises(ValueError, match="meta device"):
        pyopt.save(model, tmp_path / "meta.safetensors")
    with pytest.raises(ValueError, match="is a directory"):
        pyopt.save(mlp(), tmp_path)
