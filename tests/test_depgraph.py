"""Channel groups (pyopt.pruning.channel_groups): the coupled parameter dimensions found by tracing hand-built
residual / concat / depthwise / attention models, checked against the groups worked out by hand."""

import pytest
import torch
import torch.nn.functional as F
from structured_models import (
    Bottleneck,
    ConcatNet,
    TinyMobileNet,
    TinyResNet,
    TinyTransformer,
    bert_inputs,
    tiny_bert,
)
from torch import nn

import pyopt
from pyopt.pruning import channel_groups


def summary(groups):
    """{frozenset(producers): (kind, size, {(member, dim)}, pruneable?)}"""
    out = {}
    for g in groups:
        members = frozenset((m.name, m.dim) for m in g.members)
        out[frozenset(g.producers)] = (g.kind, g.size, members, not (g.protected or g.unsafe))
    return out


def bn(prefix):
    return {(f"{prefix}.{t}", 0) for t in ("weight", "bias", "running_mean", "running_var")}


def test_resnet_basic_block_groups():
    groups = summary(channel_groups(TinyResNet().eval(), torch.randn(2, 3, 8, 8)))
    # the residual stream of layer1 (no downsample): the stem and both blocks' last convs are one group,
    # read by every conv that consumes the stream (layer2's first conv and its downsample)
    stream1 = frozenset({"conv1", "layer1.0.conv2", "layer1.1.conv2"})
    assert groups[stream1] == (
        "channels", 8,
        frozenset({("conv1.weight", 0), ("layer1.0.conv2.weight", 0), ("layer1.1.conv2.weight", 0),
                   ("layer1.0.conv1.weight", 1), ("layer1.1.conv1.weight", 1), ("layer2.0.conv1.weight", 1),
                   ("layer2.0.downsample.0.weight", 1)} | bn("bn1") | bn("layer1.0.bn2") | bn("layer1.1.bn2")),
        True,
    )  # fmt: skip
    # layer2: the downsample conv joins the stream it adds to
    stream2 = frozenset({"layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2"})
    assert groups[stream2][:2] == ("channels", 16) and ("fc.weight", 1) in groups[stream2][2]
    assert bn("layer2.0.downsample.1") <= groups[stream2][2]
    # a block's inner channels: its first conv, its BN, the second conv's inputs
    assert groups[frozenset({"layer1.0.conv1"})] == (
        "channels", 8,
        frozenset({("layer1.0.conv1.weight", 0), ("layer1.0.conv2.weight", 1)} | bn("layer1.0.bn1")), True,
    )  # fmt: skip
    assert groups[frozenset({"fc"})][3] is False  # the logits are a model output
    assert len(groups) == 7


def test_resnet_bottleneck_groups():
    groups = summary(channel_groups(TinyResNet(Bottleneck).eval(), torch.randn(1, 3, 8, 8)))
    stream = frozenset({"layer1.0.downsample.0", "layer1.0.conv3", "layer1.1.conv3"})
    kind, size, members, ok = groups[stream]
    assert (kind, size, ok) == ("channels", 32, True)
    consumers = {
        ("layer1.1.conv1.weight", 1),
        ("layer2.0.conv1.weight", 1),
        ("layer2.0.downsample.0.weight", 1),
    }
    assert consumers <= members and bn("layer1.0.downsample.1") <= members
    # the stem feeds only layer1.0 (its conv1 and downsample): not coupled to the stream
    assert groups[frozenset({"conv1"})][2] == frozenset(
        {("conv1.weight", 0), ("layer1.0.conv1.weight", 1), ("layer1.0.downsample.0.weight", 1)} | bn("bn1")
    )
    for inner in ("layer1.0.conv1", "layer1.0.conv2", "layer2.1.conv2"):
        assert groups[frozenset({inner})][3]
    assert len(groups) == 12


def test_mobilenet_depthwise_and_grouped_conv():
    groups = channel_groups(TinyMobileNet().eval(), torch.randn(1, 3, 8, 8))
    by = summary(groups)
    # depthwise: the expansion conv, the depthwise conv and both BNs share the channels
    expand = by[frozenset({"features.1.conv.0", "features.1.conv.3"})]
    assert expand[:2] == ("channels", 32) and expand[3]
    assert {("features.1.conv.3.weight", 0), ("features.1.conv.6.weight", 1)} <= expand[2]
    assert ("features.1.conv.3.weight", 1) not in expand[2]  # the depthwise weight's in-dim has size 1
    # the grouped conv (groups=4 over 8 channels): the stream is (4 groups x 2); the group count is kept,
    # the 2 channels per group are prunable, the same ones in every group
    stream = [g for g in groups if "features.0.0" in g.producers]
    sizes = sorted((g.size, bool(g.protected)) for g in stream)
    assert sizes == [(2, False), (4, True)]
    inner = next(g for g in stream if g.size == 2)
    member = next(m for m in inner.members if m.name == "features.0.0.weight")
    assert member.channel.tolist() == [0, 1] * 4  # stream channel 2*g + c belongs to in-group channel c
    out_inner = by[frozenset({"features.3"})]
    assert out_inner[:2] == ("channels", 3)


def test_concat_channel_maps():
    groups = channel_groups(ConcatNet().eval(), torch.randn(2, 3, 4, 4))
    a = next(g for g in groups if g.producers == ["a"])
    b = next(g for g in groups if g.producers == ["b"])
    c = next(g for g in groups if g.producers == ["c"])
    ca = next(m for m in a.members if m.name == "c.weight")
    cb = next(m for m in b.members if m.name == "c.weight")
    assert ca.dim == cb.dim == 1
    assert ca.channel.tolist() == list(range(6)) + [-1] * 4  # c's inputs 0..5 are a's, 6..9 are b's
    assert cb.channel.tolist() == [-1] * 6 + list(range(4))
    fc = next(m for m in c.members if m.name == "fc.weight")  # flatten: channel k owns features 16k..16k+15
    assert fc.channel.tolist() == [k for k in range(5) for _ in range(16)]


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "matmul-softmax"])
def test_attention_heads_and_ffn_groups(sdpa):
    groups = channel_groups(TinyTransformer(sdpa).eval(), torch.randn(2, 5, 6))
    heads = [g for g in groups if g.kind == "heads"]
    assert [g.producers for g in heads] == [[f"blocks.{i}.attn.{p}" for p in "qkv"] for i in (0, 1)]
    h = heads[0]
    assert h.size == 4 and not h.protected and not h.unsafe and not h.inexact
    members = {(m.name, m.dim): m.channel.tolist() for m in h.members}
    per_head = [c for c in range(4) for _ in range(4)]  # head c owns rows / columns 4c .. 4c+3
    for p in "qkv":
        assert members[(f"blocks.0.attn.{p}.weight", 0)] == per_head
        assert members[(f"blocks.0.attn.{p}.bias", 0)] == per_head
    assert members[("blocks.0.attn.o.weight", 1)] == per_head
    ffn = next(g for g in groups if g.producers == ["blocks.0.fc1"])
    assert {(m.name, m.dim) for m in ffn.members} == {
        ("blocks.0.fc1.weight", 0), ("blocks.0.fc1.bias", 0), ("blocks.0.fc2.weight", 1)
    }  # fmt: skip
    hidden = next(g for g in groups if "embed" in g.producers)
    assert hidden.inexact and "LayerNorm" in hidden.inexact[0] and not hidden.protected
    head_dims = [g for g in groups if g.producers[:1] == ["blocks.0.attn.q"] and g.kind == "channels"]
    assert head_dims and all(g.protected for g in head_dims)  # head_dim: whole heads only


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bert_groups(attn):
    groups = channel_groups(tiny_bert(attn), bert_inputs())
    heads = [g for g in groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.size == 4 and not (g.protected or g.unsafe) for g in heads)
    names = {m.name for m in heads[1].members}
    layer = "encoder.layer.1.attention"
    assert {f"{layer}.self.{p}.{t}" for p in ("query", "key", "value") for t in ("weight", "bias")} <= names
    assert f"{layer}.output.dense.weight" in names
    ffn = [g for g in groups if g.producers == [f"encoder.layer.{i}.intermediate.dense" for i in (0,)]]
    assert ffn and ffn[0].size == 48 and not (ffn[0].protected or ffn[0].unsafe or ffn[0].inexact)
    hidden = next(g for g in groups if "embeddings.word_embeddings" in g.producers)
    assert hidden.protected and hidden.inexact  # an output, and LayerNorm'd


def test_unsupported_couplings_are_marked_unsafe():
    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(self.a(x)[:, :4])

    g = next(g for g in channel_groups(Sliced(), torch.randn(2, 4)) if g.producers == ["a"])
    assert g.unsafe and "slices channels" in g.unsafe[0]

    class Cumsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), -1))

    g = next(g for g in channel_groups(Cumsum(), torch.randn(2, 4)) if g.producers == ["a"])
    assert "aten.cumsum is not known" in g.unsafe[0]


def test_softmax_and_mean_over_channels_are_inexact_sum_is_exact():
    class Reduce(nn.Module):
        def __init__(self, op):
            super().__init__()
            self.a, self.op = nn.Linear(4, 8), op

        def forward(self, x):
            return self.op(self.a(x))

    def group(op):
        return next(g for g in channel_groups(Reduce(op), torch.randn(2, 4)) if g.producers == ["a"])

    assert "softmax" in group(lambda y: F.softmax(y, -1) * 2).inexact[0]
    assert "mean" in group(lambda y: y.mean(-1)).inexact[0]
    assert not group(lambda y: y.sum(-1)).inexact


def test_groups_module_is_exported():
    assert pyopt.pruning.channel_groups is channel_groups
