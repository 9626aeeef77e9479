"""pyopt.export_onnx for whole models: the W8A8 integer-kernel graphs (matching pyopt), dynamic batch and
sequence axes, and every pyopt layer (embeddings, pruned layers of every format) exporting and agreeing
with pyopt in onnxruntime.

Documented tolerance (README "Model-level API"): the integer paths compute pyopt's int8 codes and integer
sums exactly, so outputs agree with pyopt to float32 rounding of the epilogue (FP32_REORDERED) wherever
the u8 x s8 kernel is exact; embeddings are bit-identical; float-weight layers agree to FP32_REORDERED."""

import pytest
import torch
from conftest import import_transformers
from tolerances import FP32_REORDERED
from torch import nn

import pyopt
from pyopt.io.onnx_export import exact_u8s8_here
from pyopt.nn import Int8Embedding, Int8EmbeddingBag, SparseLinear
from pyopt.nn.registry import MODULES

onnx = pytest.importorskip("onnx", reason="onnx is an optional extra (pip install onnx onnxruntime)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra (pip install onnxruntime)")


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(path, *inputs):
    """Outputs of the exported graph; inputs by export_onnx's names (an input the graph does not use is
    dropped from it by the exporter)."""
    sess = session(path)
    names = ["input"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]
    present = {i.name for i in sess.get_inputs()}
    feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True) if n in present}
    return [torch.from_numpy(o) for o in sess.run(None, feed)]


def op_types(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(96, 256)
        self.down = nn.Linear(256, 96)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


@pytest.mark.parametrize("kernel", ["ort", "ort-u8u8", "onnx", "auto"])
def test_w8a8_integer_graph_matches_pyopt_with_dynamic_batch_and_sequence(tmp_path, kernel):
    model, _ = pyopt.quantize(Block(), mode="dynamic", min_weights=0)
    path = tmp_path / "m.onnx"
    pyopt.export_onnx(model, torch.randn(2, 16, 96), path, int8_kernel=kernel)
    ops = op_types(path)
    integer_op = "MatMulInteger" if kernel == "onnx" else "MatMulIntegerToFloat"
    assert ops.count(integer_op) == 2 and "DequantizeLinear" not in ops
    x = torch.randn(3, 14, 96)  # another batch size and sequence length
    (got,) = run(path, x)
    with torch.no_grad():
        want = model(x)
    assert got.shape == want.shape
    exact = kernel == "ort-u8u8" or (kernel == "auto") or exact_u8s8_here()
    if exact:
        torch.testing.assert_close(got, want, **FP32_REORDERED)
    else:  # AVX2-only x86: MLAS's u8 x s8 pair sums saturate (documented); the graph still runs
        assert torch.isfinite(got).all()


def test_auto_picks_the_exact_kernel_for_this_cpu(tmp_path):
    model, _ = pyopt.quantize(Block(), mode="dynamic", min_weights=0)
    pyopt.export_onnx(model, torch.randn(1, 96), tmp_path / "a.onnx")
    init = {i.name: i.data_type for i in onnx.load(str(tmp_path / "a.onnx")).graph.initializer}
    weight_types = {t for t in init.values() if t in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    assert weight_types == {onnx.TensorProto.INT8 if exact_u8s8_here() else onnx.TensorProto.UINT8}


@pytest.mark.parametrize("mode", ["weight_only", "dynamic"])
def test_int8_embedding_export_is_bit_identical(tmp_path, mode):
    model = nn.Sequential(nn.Embedding(300, 32, padding_idx=1))
    model, _ = pyopt.quantize(model, mode=mode, min_weights=0)
    assert isinstance(model[0], Int8Embedding)
    path = tmp_path / "e.onnx"
    pyopt.export_onnx(model, torch.randint(0, 300, (2, 5)), path)
    assert "Gather" in op_types(path)
    ids = torch.randint(0, 300, (4, 9))
    (got,) = run(path, ids)
    assert torch.equal(got, model(ids))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_int8_embedding_bag_export(tmp_path, mode, padding_idx):
    bag = Int8EmbeddingBag.from_float(nn.EmbeddingBag(50, 8, mode=mode, padding_idx=padding_idx))
    # 2-D input: fixed-size bags
    p2 = tmp_path / "b2.onnx"
    pyopt.export_onnx(nn.Sequential(bag), torch.randint(0, 50, (3, 4)), p2)
    x2 = torch.randint(0, 50, (5, 6))
    x2[0, :] = 2  # an all-padding bag when padding_idx=2
    (got,) = run(p2, x2)
    torch.testing.assert_close(got, bag(x2), **FP32_REORDERED)

    # 1-D input + offsets (+ per-sample weights for sum); empty bags included
    class WithOffsets(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = bag

        def forward(self, idx, offsets, psw):
            return self.bag(idx, offsets, psw if mode == "sum" else None)

    m1 = WithOffsets()
    idx, offsets = torch.randint(0, 50, (10,)), torch.tensor([0, 3, 3, 7])
    p1 = tmp_path / "b1.onnx"
    pyopt.export_onnx(
        m1,
        (idx, offsets, torch.rand(10)),
        p1,
        dynamic_axes={"input0": {0: "n"}, "input1": {0: "b"}, "input2": {0: "n"}},
    )
    idx2, off2, psw2 = torch.randint(0, 50, (13,)), torch.tensor([0, 0, 5, 9, 12]), torch.rand(13)
    idx2[[1, 6]] = 2
    (got,) = run(p1, idx2, off2, psw2)
    torch.testing.assert_close(got, m1(idx2, off2, psw2), **FP32_REORDERED)


@pytest.mark.parametrize("fmt", ["masked", "dense", "csr", "bsr", "csr_int8"])
def test_pruned_linear_exports_in_every_format(tmp_path, fmt):
    torch.manual_seed(0)
    mask = (
        (torch.rand(16, 12) > 0.5).repeat_interleave(4, 0).repeat_interleave(8, 1)
    )  # 64 x 96, (4, 8) blocks
    layer = SparseLinear.from_dense(nn.Linear(96, 64), mask)
    if fmt == "csr_int8":
        layer.compress(format="csr").quantize_int8()
    elif fmt != "masked":
        layer.compress(format=fmt, block=(4, 8) if fmt == "bsr" else None)
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(64, 10))
    path = tmp_path / "s.onnx"
    pyopt.export_onnx(model, torch.randn(2, 96), path)
    x = torch.randn(7, 96)
    (got,) = run(path, x)
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), **FP32_REORDERED)


def test_pruned_conv_and_int8_model_export(tmp_path):
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16 * 36, 64)
    )
    model, _ = pyopt.prune(model, 0.5)
    model, _ = pyopt.sparsify(model)
    path = tmp_path / "c.onnx"
    pyopt.export_onnx(model, torch.randn(1, 3, 8, 8), path)
    x = torch.randn(4, 3, 8, 8)
    (got,) = run(path, x)
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), **FP32_REORDERED)


def test_every_registered_layer_exports(tmp_path):
    """One model holding each pyopt layer type the library registers; exports and agrees with pyopt."""
    torch.manual_seed(1)
    built = {
        "Int8Linear": pyopt.nn.Int8Linear.from_float(nn.Linear(32, 32), mode="weight_only"),
        "Int8Conv2d": None,
        "BinaryLinear": pyopt.nn.BinaryLinear.from_float(nn.Linear(32, 32)),
        "SparseLinear": SparseLinear.from_dense(nn.Linear(32, 32), torch.rand(32, 32) > 0.5).compress(
            format="csr"
        ),
        "SparseConv2d": None,
        "Int8Embedding": Int8Embedding.from_float(nn.Embedding(20, 32)),
        "Int8EmbeddingBag": Int8EmbeddingBag.from_float(nn.EmbeddingBag(20, 32)),
    }
    layers = {k: v for k, v in built.items() if v is not None}

    class All(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleDict(layers)
            self.conv = pyopt.nn.Int8Conv2d.from_float(nn.Conv2d(2, 4, 3))
            self.sconv = pyopt.prune(nn.Sequential(nn.Conv2d(2, 4, 3)), 0.5)[0][0]

        def forward(self, ids, img):
            h = self.layers["Int8Embedding"](ids).mean(1) + self.layers["Int8EmbeddingBag"](ids)
            for k in ("Int8Linear", "BinaryLinear", "SparseLinear"):
                h = torch.tanh(self.layers[k](h))
            return h.sum(-1) + self.conv(img).mean((1, 2, 3)) + self.sconv(img).mean((1, 2, 3))

    model = All()
    covered = {type(m).__name__ for m in model.modules()} & set(MODULES)
    assert covered >= {"Int8Linear", "Int8Conv2d", "BinaryLinear", "SparseLinear", "SparseConv2d",
                       "Int8Embedding", "Int8EmbeddingBag"}  # fmt: skip
    path = tmp_path / "all.onnx"
    pyopt.export_onnx(model, (torch.randint(0, 20, (2, 5)), torch.randn(2, 2, 6, 6)), path)
    ids, img = torch.randint(0, 20, (3, 5)), torch.randn(3, 2, 6, 6)
    (got,) = run(path, ids, img)
    with torch.no_grad():
        want = model(ids, img)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) < 1e-2  # the conv's int8 activations: Q/DQ rounding, see test_onnx


try:
    transformers = import_transformers()
except ImportError:
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="transformers is a dev dependency")


class Encoder(nn.Module):
    """A Hugging Face encoder called with (input_ids, attention_mask), returning the last hidden state."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def tiny_bert():
    cfg = transformers.BertConfig(
        vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    return Encoder(transformers.BertModel(cfg).eval())


@needs_transformers
def test_tiny_bert_end_to_end(tmp_path):
    """A BERT (random weights, tiny config: offline and fast): quantised with embeddings, saved, exported
    with dynamic batch and sequence, run in onnxruntime at another shape, matching pyopt."""
    model = tiny_bert()
    ids, mask = torch.randint(0, 500, (3, 12)), torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        ref = model(ids, mask)
    q, report = pyopt.quantize(model, mode="dynamic", min_weights=0)
    rows = {r["layer"]: r for r in report}
    assert rows["bert.embeddings.word_embeddings"]["to"] == "Int8Embedding"
    assert any(r["action"] == "kept float" and "LayerNorm" in r["layer"] for r in report)
    with torch.no_grad():
        out = q(ids, mask)
    assert float(nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1)).min()) > 0.99
    path = tmp_path / "bert.onnx"
    pyopt.export_onnx(q, (ids[:2, :10], mask[:2, :10]), path, int8_kernel="ort-u8u8")
    (got,) = run(path, ids, mask)
    torch.testing.assert_close(got, out, rtol=1e-4, atol=2e-4)
