"""pyopt.export_onnx: the QDQ graph runs in onnxruntime (CPU provider) and agrees with pyopt."""

import pytest
import torch
from tolerances import FP32_REORDERED
from torch import nn

import pyopt
from pyopt.nn import BinaryLinear
from pyopt.nn.registry import register_module

onnx = pytest.importorskip("onnx", reason="onnx is an optional extra (pip install onnx onnxruntime)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra (pip install onnxruntime)")


def sqnr_db(ref, approx) -> float:
    ref, approx = torch.as_tensor(ref).double(), torch.as_tensor(approx).double()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - approx).pow(2).sum().clamp_min(1e-30)))


def run_ort(path, x, level=None):
    """level=None: onnxruntime's defaults (it may fuse DQ->MatMul into its own int8 kernels);
    ORT_ENABLE_BASIC: the graph as written."""
    opts = ort.SessionOptions()
    if level is not None:
        opts.graph_optimization_level = level
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])


def op_types(path):
    model = onnx.load(str(path))
    return [n.op_type for n in model.graph.node], {i.name: i.data_type for i in model.graph.initializer}


@pytest.mark.parametrize("binact", [False, True], ids=["float_act", "binary_act"])
def test_binary_model(tmp_path, binact):
    model = nn.Sequential(nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    model[0] = BinaryLinear.from_float(model[0], binary_activations=binact)
    model[2] = BinaryLinear.from_float(model[2], binary_activations=binact)
    path = tmp_path / "m.onnx"
    pyopt.export_onnx(model, torch.randn(2, 48), path)
    ops, inits = op_types(path)
    assert ops.count("DequantizeLinear") == 2 and ops.count("MatMul") == 2 and "Gemm" in ops
    assert sum(t == onnx.TensorProto.INT8 for t in inits.values()) == 2  # weights stored as int8
    x = torch.randn(9, 48)  # another batch size: the batch dim is dynamic
    expected = model(x).detach()
    exact = run_ort(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    torch.testing.assert_close(exact, expected, **FP32_REORDERED)  # fp32 sums in another order
    assert sqnr_db(expected, run_ort(path, x)) >= 30  # ORT's own int8 fusion: int8 rounding only


@register_module
class _W8A8Duck(nn.Module):
    """A stand-in W8A8 layer written from the API contract (per-token int8 activations, per-channel int8
    weights), read by export_onnx's duck typing, to test the dynamic-activation export path on its own."""

    mode = "dynamic"

    def __init__(self, weight_q, weight_scale, bias):
        super().__init__()
        self.out_features, self.in_features = weight_q.shape
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    def extra_config(self):
        return {}

    @classmethod
    def from_config(cls, cfg):
        raise NotImplementedError

    def forward(self, x):
        x_fake_quant = pyopt.io.onnx_export._PerTokenQDQ.forward(None, x)
        return nn.functional.linear(
            x_fake_quant, self.weight_q.float() * self.weight_scale[:, None], self.bias
        )


@register_module
class _W8A8WithSpec(_W8A8Duck):
    def onnx_qdq(self):
        return {
            "kind": "linear",
            "weight_q": self.weight_q,
            "weight_scale": self.weight_scale,
            "bias": self.bias,
            "activation": "dynamic",
        }


@pytest.mark.parametrize("cls", [_W8A8Duck, _W8A8WithSpec])
def test_dynamic_activation_qdq(tmp_path, cls):
    w = torch.randn(24, 40)
    scale = w.abs().amax(1) / 127
    layer = cls(torch.round(w / scale[:, None]).to(torch.int8), scale, torch.randn(24))
    model = nn.Sequential(layer, nn.ReLU())
    path = tmp_path / "d.onnx"
    pyopt.export_onnx(model, torch.randn(2, 3, 40), path, int8_kernel="qdq")  # the portable Q/DQ graph
    ops, _ = op_types(path)
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 2
    x = torch.randn(4, 3, 40)  # 3-D input: per-token scales over the last dim
    expected = model(x)
    got = run_ort(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    # the same int8 codes up to one rounding step of x/scale vs x*(1/scale): compare at int8 resolution
    assert sqnr_db(expected, got) >= 60
    assert sqnr_db(expected, run_ort(path, x)) >= 30


@pytest.mark.skipif(
    not hasattr(pyopt.nn, "Int8Conv2d"), reason="pyopt.nn.Int8Linear / Int8Conv2d are not in this build yet"
)
@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_int8_cnn(tmp_path, mode):
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 3 * 3, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    model, _ = pyopt.quantize(model, mode=mode, min_weights=0)
    path = tmp_path / "c.onnx"
    pyopt.export_onnx(model, torch.randn(2, 3, 8, 8), path)
    ops, _ = op_types(path)
    if mode == "dynamic":  # the linears run onnxruntime's integer matmul, the convs Q/DQ
        assert "Conv" in ops and ops.count("com.microsoft.MatMulIntegerToFloat".split(".")[-1]) == 2
        assert ops.count("DequantizeLinear") >= 3
    else:
        assert "Conv" in ops and "MatMul" in ops and ops.count("DequantizeLinear") >= 4
    x = torch.randn(5, 3, 8, 8)
    expected = model(x)
    assert sqnr_db(expected, run_ort(path, x)) >= 30


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="example_input"):
        pyopt.export_onnx(nn.Sequential(nn.Linear(2, 2)), [1, 2], tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="model"):
        pyopt.export_onnx("x", torch.randn(1, 2), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset must be >= 13"):
        pyopt.export_onnx(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2), tmp_path / "x.onnx", opset=18)
    with pytest.raises(ValueError, match="int8_kernel must be one of"):
        pyopt.export_onnx(
            nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2), tmp_path / "x.onnx", int8_kernel="x"
        )
    with pytest.raises(ValueError, match="opset must be >= 13"):
        pyopt.export_onnx(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2), tmp_path / "x.onnx", opset=9)
    with pytest.raises(TypeError, match="opset must be an int"):
        pyopt.export_onnx(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2), tmp_path / "x.onnx", opset="13")
