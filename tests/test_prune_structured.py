"""pyopt.prune(pattern="channel", example_inputs=...): dependency-aware channel pruning.

Exactness: the pruned model computes what the original computes with every removed channel zeroed in every
tensor of its group (structured_models.zeroed_original), in float64, so only summation order can differ.
Round trips: pyopt.save of the pruned model, pyopt.load into a fresh unpruned model, bit-identical outputs.
"""

import copy

import pytest
import torch
from structured_models import (
    Bottleneck,
    ConcatNet,
    TinyMobileNet,
    TinyResNet,
    TinyTransformer,
    bert_inputs,
    randomize_norms,
    tiny_bert,
    zeroed_original,
)
from test_prune_channel import chain_model
from tolerances import tol
from torch import nn

import pyopt


def _img(n=2, hw=8):
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(3))


CASES = {
    "resnet-basic": (lambda: TinyResNet(), lambda: _img()),
    "resnet-bottleneck": (lambda: TinyResNet(Bottleneck), lambda: _img(1)),
    "mobilenetv2": (lambda: TinyMobileNet(), lambda: _img()),
    "concat": (lambda: ConcatNet(), lambda: _img(2, 4)),
    "sequential-chain": (lambda: chain_model(), lambda: _img(4)),
    "linear-chain": (lambda: nn.Sequential(nn.Linear(7, 12), nn.GELU(), nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 2)),
                     lambda: torch.randn(5, 7)),
    "transformer-sdpa": (lambda: TinyTransformer(True), lambda: torch.randn(2, 5, 6)),
    "transformer-matmul": (lambda: TinyTransformer(False), lambda: torch.randn(2, 5, 6)),
    "bert-sdpa": (lambda: tiny_bert("sdpa"), bert_inputs),
    "bert-eager": (lambda: tiny_bert("eager"), bert_inputs),
}  # fmt: skip


def _call(model, x):
    out = model(**x) if isinstance(x, dict) else model(x)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out


def _make(case):
    make_model, make_x = CASES[case]
    torch.manual_seed(0)
    model = randomize_norms(make_model()).double().eval()
    x = make_x()
    x = {k: v for k, v in x.items()} if isinstance(x, dict) else x.double()
    return model, x


_PRUNED = {}


def _pruned_half(case):
    """(original, x, pruned at 0.5, report), traced once per case for the tests that only read them."""
    if case not in _PRUNED:
        model, x = _make(case)
        _PRUNED[case] = (
            model,
            x,
            *pyopt.prune(copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x),
        )
    return _PRUNED[case]


@pytest.mark.parametrize("case", list(CASES))
def test_pruned_model_equals_original_with_removed_channels_zeroed(case, tmp_path):
    model, x, pruned, report = _pruned_half(case)
    assert report.summary["pruned_groups"] > 0
    torch.testing.assert_close(
        _call(pruned, x), _call(zeroed_original(model, report), x), **tol(torch.float64)
    )
    params = sum(p.numel() for p in pruned.parameters())
    assert report.summary["params_after"] == params < report.summary["params_before"]
    assert report.summary["macs_after"] < report.summary["macs_before"]
    for g in report.groups:  # every pruned group lost round(0.5 * width) channels
        if g.kept is not None:
            assert len(g.kept) == g.size - round(0.5 * g.size)
    # save what got smaller; a fresh model of the original architecture takes its shapes on load
    pyopt.save(pruned, tmp_path / "m.safetensors")
    fresh = _make(case)[0]
    pyopt.load(fresh, tmp_path / "m.safetensors")
    assert torch.equal(_call(fresh, x), _call(pruned, x))
    assert sum(p.numel() for p in fresh.parameters()) == params


def test_module_attributes_follow():
    pruned = _pruned_half("mobilenetv2")[2]
    dw = pruned.features[1].conv[3]
    assert dw.groups == dw.in_channels == dw.out_channels == 16  # depthwise stays depthwise
    assert pruned.features[1].conv[1].num_features == 16
    grouped = pruned.features[3]
    assert (
        grouped.groups == 4 and grouped.in_channels == 4 and grouped.weight.shape == (4, 1, 3, 3)
    )  # 3 -> 1 per group
    pruned = _pruned_half("bert-sdpa")[2]
    att = pruned.encoder.layer[0].attention.self
    assert (att.num_attention_heads, att.all_head_size, att.query.out_features) == (2, 16, 16)
    assert pruned.encoder.layer[0].attention.output.dense.in_features == 16
    assert pruned.encoder.layer[1].intermediate.dense.out_features == 24
    assert pruned.config.num_attention_heads == 4  # the shared config is not touched


def test_report_lists_every_group():
    model, x = _make("transformer-sdpa")
    _, report = pyopt.prune(model, 0.25, pattern="channel", example_inputs=x)
    rows = {r["group"]: r for r in report}
    assert len(rows) == report.summary["groups"] == len(report.groups)
    heads = [r for r in report if r["kind"] == "heads"]
    assert [r["width"] for r in heads] == ["4->3", "4->3"] and all(r["action"] == "pruned" for r in heads)
    hidden = next(r for r in report if r["layer"].startswith("embed"))
    assert hidden["action"] == "kept" and hidden["exact"] == "no" and "allow_inexact" in hidden["reason"]
    assert "width" in str(report) and "macs_ratio" in str(report)


def test_allow_inexact_prunes_through_layernorm():
    model, x = _make("transformer-sdpa")
    pruned, report = pyopt.prune(
        copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x, allow_inexact=True
    )
    assert pruned.embed.out_features == 8 and pruned.blocks[0].ln1.normalized_shape == (8,)
    assert pruned.head.in_features == 8 and pruned(x).shape == model(x).shape
    # inexact indeed: the LayerNorm statistics now run over 8 channels, not 16 with 8 zeros
    assert not torch.allclose(pruned(x), zeroed_original(model, report)(x))


def test_amount_forms_round_to_and_errors():
    model, x = _make("linear-chain")  # groups of 12 and 9 channels
    pruned, report = pyopt.prune(copy.deepcopy(model), 3, pattern="channel", example_inputs=x)
    assert [len(g.kept) for g in report.groups if g.kept is not None] == [9, 6]
    _, report = pyopt.prune(copy.deepcopy(model), 0.0, pattern="channel", example_inputs=x)
    assert report.summary["pruned_groups"] == 0 and report.summary["params_ratio"] == 1.0
    pruned, report = pyopt.prune(copy.deepcopy(model), 0.3, pattern="channel", example_inputs=x, round_to=4)
    assert [len(g.kept) for g in report.groups if g.kept is not None] == [8, 8]  # 12 - 4 = 8; 9 - 3 = 6 -> 8
    with pytest.raises(ValueError, match="would remove all 12 channels of group g0"):
        pyopt.prune(copy.deepcopy(model), 1.0, pattern="channel", example_inputs=x)
    with pytest.raises(ValueError, match="amount=10 is larger than the number of channels of group g1"):
        pyopt.prune(copy.deepcopy(model), 10, pattern="channel", example_inputs=x)
    for kwargs, exc, match in (
        (dict(round_to=0), ValueError, "round_to=0"),
        (dict(channel_norm=3), ValueError, "channel_norm=3"),
        (dict(example_inputs=3), TypeError, "example_inputs must be"),
    ):
        kwargs.setdefault("example_inputs", x)
        with pytest.raises(exc, match=match):
            pyopt.prune(copy.deepcopy(model), 0.5, pattern="channel", **kwargs)
    with pytest.raises(ValueError, match="need example_inputs"):
        pyopt.prune(copy.deepcopy(model), 0.5, pattern="channel", round_to=4)


def test_importance_function_random_and_scores():
    model, x = _make("linear-chain")

    def last_channels_first(group):  # keep the highest-index channels
        return torch.arange(group.size, dtype=torch.float64)

    _, report = pyopt.prune(copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x,
                            importance=last_channels_first)  # fmt: skip
    assert [g.kept.tolist() for g in report.groups if g.kept is not None] == [
        list(range(6, 12)),
        [4, 5, 6, 7, 8],
    ]
    with pytest.raises(ValueError, match="returned 3 scores for 12 channels"):
        pyopt.prune(
            copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x, importance=lambda g: [1, 2, 3]
        )
    with pytest.raises(TypeError, match="importance must be a callable"):
        pyopt.prune(copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x, importance=3)
    runs = [
        pyopt.prune(copy.deepcopy(model), 0.5, method="random", pattern="channel", example_inputs=x,
                    generator=torch.Generator().manual_seed(s))[1]
        for s in (0, 0, 1)
    ]  # fmt: skip
    kept = [[g.kept.tolist() for g in r.groups if g.kept is not None] for r in runs]
    assert kept[0] == kept[1] != kept[2]
    # importance_scores stand in for a layer's weight in the group magnitude
    scores = {"0": torch.arange(12.0)[:, None].expand(12, 7).double() * 100}
    _, report = pyopt.prune(
        copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x, importance_scores=scores
    )
    assert report.groups[0].kept.tolist() == list(range(6, 12))


def test_default_importance_is_group_l1_or_l2():
    model, x = _make("linear-chain")
    w0, w2 = model[0].weight.detach(), model[2].weight.detach()
    for p in (1, 2):
        _, report = pyopt.prune(
            copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x, channel_norm=p
        )
        imp = w0.norm(p=p, dim=1) + w2.norm(p=p, dim=0)  # the producer's rows + the consumer's columns
        expected = sorted(torch.topk(imp, 6, largest=True).indices.tolist())
        assert report.groups[0].kept.tolist() == expected


def test_exclude_and_include_protect_groups():
    model, x = _make("resnet-basic")
    _, report = pyopt.prune(
        copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x, exclude=["layer1.0.conv2"]
    )
    stream = next(g for g in report.groups if "layer1.0.conv2" in g.producers)
    assert stream.kept is None and sum(g.kept is not None for g in report.groups) == 5
    row = next(r for r in report if r["group"] == stream.id)
    assert row["reason"] == "excluded (layer1.0.conv2)"
    _, report = pyopt.prune(
        copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x, exclude=[nn.BatchNorm2d]
    )
    assert all(g.kept is None for g in report.groups)  # every group has a BatchNorm
    _, report = pyopt.prune(
        copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x, include=["layer*.conv1"]
    )
    assert sorted(g.producers[0] for g in report.groups if g.kept is not None) == [
        "layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.1.conv1"
    ]  # fmt: skip


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, repr(model)


class Sliced(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x)[:, :4])


class HardCodedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c, self.b = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(self.c(self.a(x)).view(2, 8))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        y = self.a(x)
        return self.b(y * 2 if y.sum() > 0 else y)


class WithMHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.m, self.o = (
            nn.Linear(4, 8),
            nn.MultiheadAttention(8, 2, batch_first=True),
            nn.Linear(8, 2),
        )

    def forward(self, x):
        y = self.a(x)
        return self.o(self.m(y, y, y)[0])


@pytest.mark.parametrize("model,x,match", [
    (Sliced(), torch.randn(2, 4), r"(?s)group g0 \(a\): slice .*slices channels.*exclude=\['a'\]"),
    (WithMHA(), torch.randn(2, 3, 4), r"'m' \(MultiheadAttention\): nn.MultiheadAttention checks embed_dim"),
    (DataDependent(), torch.randn(2, 4), "torch.export cannot trace DataDependent"),
    (HardCodedView(), torch.randn(2, 4), r"no longer runs on example_inputs, so nothing was changed: RuntimeError"),
], ids=["slice", "mha", "untraceable", "hard-coded-width"])  # fmt: skip
def test_errors_leave_the_model_unchanged(model, x, match):
    before = _state(model)
    with pytest.raises(ValueError, match=match):
        pyopt.prune(model, 0.5, pattern="channel", example_inputs=x)
    after = _state(model)
    assert after[1] == before[1] and all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert not any(hasattr(m, "_pyopt_shape") for m in model.modules())


def test_exclude_gets_past_an_unsafe_group():
    pruned, report = pyopt.prune(
        Sliced(), 0.5, pattern="channel", example_inputs=torch.randn(2, 4), exclude="a"
    )
    assert pruned.a.out_features == 8 and report.summary["pruned_groups"] == 0


def test_training_mode_and_parameters_after_pruning():
    model, x = _make("resnet-basic")
    model.train()
    stats = model.bn1.running_mean.clone()
    pruned, report = pyopt.prune(model, 0.5, pattern="channel", example_inputs=x)
    assert pruned.training and all(m.training for m in pruned.modules())
    assert torch.equal(pruned.bn1.running_mean, stats[report.groups[0].kept])  # no forward updated the stats
    assert all(isinstance(p, nn.Parameter) and p.is_leaf and p.requires_grad for p in pruned.parameters())
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1, momentum=0.9)  # build the optimizer after pruning
    pruned(x).square().mean().backward()
    opt.step()


def test_composes_with_quantize_unstructured_onnx_and_compile(tmp_path):
    torch.manual_seed(0)
    model = randomize_norms(TinyResNet(width=16)).eval()
    x = _img(4, 8)
    model, _ = pyopt.prune(model, 0.5, pattern="channel", example_inputs=x)
    reference = model(x)
    compiled = torch.compile(copy.deepcopy(model))
    torch.testing.assert_close(compiled(x), reference, **tol(torch.float32))
    # ONNX of the channel-pruned float model, run by onnxruntime
    ort = pytest.importorskip("onnxruntime")
    pyopt.export_onnx(model, x, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    torch.testing.assert_close(
        torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]), reference, **tol(torch.float32)
    )
    # then unstructured pruning on top (masked layers), saved and reloaded into the unpruned architecture
    sparse, rep = pyopt.prune(copy.deepcopy(model), 0.5, include=[nn.Conv2d])
    assert rep.summary["layers"] > 0
    pyopt.save(sparse, tmp_path / "s.safetensors")
    fresh = pyopt.load(TinyResNet(width=16).eval(), tmp_path / "s.safetensors")
    assert torch.equal(fresh(x), sparse(x))
    # then int8 (dynamic) quantisation of the pruned model, saved and reloaded the same way
    quant, rep = pyopt.quantize(copy.deepcopy(model), mode="dynamic", min_weights=0)
    assert any(r["action"] == "quantized" for r in rep)
    pyopt.save(quant, tmp_path / "q.safetensors")
    fresh = pyopt.load(TinyResNet(width=16).eval(), tmp_path / "q.safetensors")
    assert torch.equal(fresh(x), quant(x))


def test_load_refuses_a_structure_that_does_not_fit(tmp_path):
    model, x = _make("resnet-basic")
    pruned, _ = pyopt.prune(copy.deepcopy(model), 0.5, pattern="channel", example_inputs=x)
    pyopt.save(pruned, tmp_path / "m.safetensors")
    smaller = TinyResNet(width=2).double()  # narrower than the file: a pruned file never widens a layer
    before = _state(smaller)
    with pytest.raises(ValueError, match="larger than the model's"):
        pyopt.load(smaller, tmp_path / "m.safetensors")
    assert _state(smaller)[1] == before[1]
    with pytest.raises(ValueError, match="was a Conv2d when saved but is a Linear"):
        other = TinyResNet().double()
        other.conv1 = nn.Linear(3, 8)
        pyopt.load(other, tmp_path / "m.safetensors")
