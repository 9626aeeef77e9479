"""pyopt.prune(pattern="channel"): the pruned model is smaller and computes exactly what the original computes
with the removed channels' contributions zeroed (float64: only summation order differs)."""

import copy

import pytest
import torch
from tolerances import tol
from torch import nn

import pyopt
from pyopt.nn import SparseConv2d


def chain_model():
    """Conv -> BN -> PReLU(C) (nested) -> pool -> Conv -> Sigmoid -> Dropout -> Flatten -> Linear -> BN1d -> Linear."""
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.BatchNorm2d(10), nn.PReLU(10)),
        nn.MaxPool2d(2),
        nn.Conv2d(10, 12, 3),
        nn.Sigmoid(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(48, 9),
        nn.BatchNorm1d(9),
        nn.ReLU(),
        nn.Linear(9, 5),
    ).double()
    for bn in (model[0][1], model[7]):  # non-trivial statistics, so a wrong slice shows
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -1, 1)
    nn.init.uniform_(model[0][2].weight, 0, 0.5)
    return model.eval()


# (producer, consumer, features per channel at the consumer's input)
CHAIN_PAIRS = [("0.0", "2", 1), ("2", "6", 4), ("6", "9", 1)]


def expected_kept(weight: torch.Tensor, amount, norm: int) -> torch.Tensor:
    """Independent reference: sort channels by norm (stable), drop the first round(amount * C)."""
    channels = weight.shape[0]
    norms = weight.reshape(channels, -1).norm(p=norm, dim=1).tolist()
    k = amount if isinstance(amount, int) else round(amount * channels)
    removed = set(sorted(range(channels), key=lambda c: norms[c])[:k])
    return torch.tensor([c for c in range(channels) if c not in removed])


def features(kept: torch.Tensor, hw: int) -> torch.Tensor:
    return (kept[:, None] * hw + torch.arange(hw)).reshape(-1)


def check_against_zeroed_original(original, pruned, pairs, amount, norm=1, x=None):
    """Pruned weights are the expected rows/columns of the original's; the outputs equal the original's with the
    removed channels' columns zeroed in each consumer."""
    reference = copy.deepcopy(original)
    in_index = {}
    for producer, consumer, hw in pairs:
        weight = original.get_submodule(producer).weight.detach()
        if producer in in_index:
            weight = weight.index_select(1, in_index[producer])
        kept = expected_kept(weight, amount, norm)
        assert torch.equal(pruned.get_submodule(producer).weight, weight.index_select(0, kept))
        in_index[consumer] = features(kept, hw)
        consumer_weight = reference.get_submodule(consumer).weight
        removed = torch.ones(consumer_weight.shape[1], dtype=torch.bool)
        removed[in_index[consumer]] = False
        with torch.no_grad():
            consumer_weight[:, removed] = 0
    torch.testing.assert_close(pruned(x), reference(x), **tol(torch.float64))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in original.parameters())


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75, 2])
@pytest.mark.parametrize("norm", [1, 2])
def test_channel_chain_outputs_equal_zeroed_original(amount, norm):
    original = chain_model()
    pruned, report = pyopt.prune(copy.deepcopy(original), amount, pattern="channel", channel_norm=norm)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    check_against_zeroed_original(original, pruned, CHAIN_PAIRS, amount, norm, x)
    assert pruned[9].out_features == 5  # the last layer's outputs are never pruned
    assert all(type(m) is not SparseConv2d for m in pruned.modules())  # a smaller *dense* model
    assert report.summary["params_after"] == sum(p.numel() for p in pruned.parameters())
    assert [r["layer"] for r in report] == ["0.0", "2", "6", "9"]


def test_channel_relu_chain_equals_zeroing_removed_outputs():
    """ReLU(0) = 0, so here zeroing the removed output channels (rows + bias) of the original is the same thing."""
    original = nn.Sequential(
        nn.Linear(11, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)
    ).double()
    pruned, _ = pyopt.prune(copy.deepcopy(original), 0.5, pattern="channel")
    reference = copy.deepcopy(original)
    kept_inputs = torch.arange(11)
    for i in (0, 2):
        kept = expected_kept(original[i].weight.detach().index_select(1, kept_inputs), 0.5, 1)
        removed = torch.ones(original[i].out_features, dtype=torch.bool)
        removed[kept] = False
        with torch.no_grad():
            reference[i].weight[removed] = 0
            reference[i].bias[removed] = 0
        kept_inputs = kept
    x = torch.randn(5, 11, dtype=torch.float64)
    torch.testing.assert_close(pruned(x), reference(x), **tol(torch.float64))
    assert (pruned[0].out_features, pruned[2].in_features, pruned[2].out_features) == (8, 8, 4)


def test_channel_include_exclude_and_random():
    original = chain_model()
    pruned, _ = pyopt.prune(copy.deepcopy(original), 0.5, pattern="channel", exclude="0.*")
    assert pruned[0][0].out_channels == 10 and pruned[2].out_channels == 6 and pruned[6].in_features == 24
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    runs = [
        pyopt.prune(copy.deepcopy(original), 0.5, method="random", pattern="channel",
                    generator=torch.Generator().manual_seed(s))[0]
        for s in (0, 0, 1)
    ]  # fmt: skip
    assert torch.equal(runs[0](x), runs[1](x))
    assert not all(torch.equal(a.weight, b.weight) for a, b in zip(runs[0][2:3], runs[2][2:3], strict=True))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


class SequentialWithSkip(nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


class PlainSubclass(nn.Sequential):
    pass


@pytest.mark.parametrize("model,match", [
    (Residual(), "follows nn.Sequential chains only; got Residual"),
    (SequentialWithSkip(nn.Linear(4, 4), nn.Linear(4, 4)), "got SequentialWithSkip"),
    (nn.Sequential(nn.Conv2d(3, 4, 1), Residual(), nn.Conv2d(4, 2, 1)), r"cannot follow module '1' \(Residual\)"),
    (nn.Sequential(nn.Conv2d(4, 4, 1, groups=2), nn.Conv2d(4, 2, 1)), "grouped conv '0'"),
    (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)), r"'1' \(LayerNorm\)"),
    (nn.Sequential(nn.Linear(4, 4), nn.Softmax(-1), nn.Linear(4, 2)), r"'1' \(Softmax\)"),
    (nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(0), nn.Linear(4, 2)), r"Flatten\(1, -1\) only"),
    (nn.Sequential(SparseConv2d.from_dense(nn.Conv2d(3, 4, 1), torch.ones(4, 3, 1, 1, dtype=torch.bool)),
                   nn.Conv2d(4, 2, 1)), r"'0' \(SparseConv2d\)"),
])  # fmt: skip
def test_channel_unfollowable_graphs_raise(model, match):
    with pytest.raises(ValueError, match=match):
        pyopt.prune(model, 0.5, pattern="channel")


def test_channel_bad_amounts_and_sequential_subclass():
    model = PlainSubclass(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="would remove all 4 output channels of '0'"):
        pyopt.prune(copy.deepcopy(model), 1.0, pattern="channel")
    with pytest.raises(ValueError, match="amount=5 is larger than the number of output channels"):
        pyopt.prune(copy.deepcopy(model), 5, pattern="channel")
    with pytest.raises(ValueError, match="channel_norm=3"):
        pyopt.prune(copy.deepcopy(model), 0.5, pattern="channel", channel_norm=3)
    pruned, _ = pyopt.prune(model, 1, pattern="channel")
    assert pruned[0].out_features == 3 and pruned(torch.randn(2, 4)).shape == (2, 2)
