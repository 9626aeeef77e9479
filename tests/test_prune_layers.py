"""pyopt.prune_layers: whole residual blocks / transformer layers removed (IdentityBlock), ranked by the angular
distance between each block's input and output on calibration batches (or by weight magnitude)."""

import copy
import math

import pytest
import torch
from structured_models import TinyResNet, TinyTransformer, bert_inputs, randomize_norms, tiny_bert
from torch import nn

import pyopt
from pyopt.nn import IdentityBlock
from pyopt.pruning.layers import find_blocks


class Scaled(nn.Module):
    """x + alpha * tanh(W x): the larger alpha, the more the block turns its input."""

    def __init__(self, dim, alpha):
        super().__init__()
        self.fc, self.alpha = nn.Linear(dim, dim), alpha

    def forward(self, x):
        return x + self.alpha * torch.tanh(self.fc(x))


def residual_stack(alphas=(0.5, 0.05, 2.0, 0.2), dim=6):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, dim), nn.Sequential(*[Scaled(dim, a) for a in alphas]), nn.Linear(dim, 3)
    )


def angular(a, b):
    """Reference: mean over rows of arccos(cos(a_i, b_i)) / pi, in float64, one row at a time."""
    out = []
    a, b = a.detach().double(), b.detach().double()
    for u, v in zip(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), strict=True):
        cos = float(u @ v / (u.norm() * v.norm()))
        out.append(math.acos(max(-1.0, min(1.0, cos))) / math.pi)
    return sum(out) / len(out)


def test_candidates():
    assert find_blocks(residual_stack()) == ["1.0", "1.1", "1.2", "1.3"]
    assert find_blocks(TinyResNet()) == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    assert find_blocks(TinyTransformer()) == ["blocks.0", "blocks.1"]
    assert find_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == []  # mixed leaf layers: no blocks


def test_angular_scores_by_hand_and_removal():
    model = residual_stack()
    calib = [torch.randn(5, 4), torch.randn(3, 4)]
    original = copy.deepcopy(model)
    pruned, report = pyopt.prune_layers(model, 2, calib)
    scores = {}
    for i, block in enumerate(original[1]):  # the hidden states each block sees, batch by batch
        ins, outs = [], []
        for x in calib:
            h = original[0](x)
            for b in original[1][:i]:
                h = b(h)
            ins.append(h)
            outs.append(block(h))
        scores[f"1.{i}"] = angular(torch.cat(ins), torch.cat(outs))
    for row in report:
        assert row["score"] == pytest.approx(scores[row["layer"]], abs=1e-9)
    removed = sorted(scores, key=scores.get)[:2]
    assert removed == ["1.1", "1.3"]  # the smallest alphas turn their input least
    assert [r["layer"] for r in report if r["action"] == "removed"] == removed
    assert all(isinstance(pruned[1][int(n[-1])], IdentityBlock) for n in removed)
    reference = nn.Sequential(original[0], nn.Sequential(original[1][0], original[1][2]), original[2])
    x = torch.randn(7, 4)
    assert torch.equal(pruned(x), reference(x))
    assert report.summary == {"candidates": 4, "removable": 4, "removed": 2}


def test_magnitude_fraction_and_exclude():
    model = residual_stack()
    with torch.no_grad():
        for i, block in enumerate(model[1]):
            block.fc.weight.fill_(0.1 * (4 - i))  # mean |w| falls with depth (biases are small)
            block.fc.bias.zero_()
    _, report = pyopt.prune_layers(copy.deepcopy(model), 0.5, [torch.randn(2, 4)], method="magnitude")
    assert [r["layer"] for r in report if r["action"] == "removed"] == ["1.2", "1.3"]
    assert report[0]["score"] == pytest.approx(0.4 * 36 / 42)
    _, report = pyopt.prune_layers(
        copy.deepcopy(model), 1, [torch.randn(2, 4)], method="magnitude", exclude="1.3"
    )
    assert [r["layer"] for r in report] == ["1.0", "1.1", "1.2"]
    assert [r["layer"] for r in report if r["action"] == "removed"] == ["1.2"]


def test_resnet_blocks_that_change_shape_are_kept():
    torch.manual_seed(0)
    model = randomize_norms(TinyResNet()).eval()
    x = torch.randn(2, 3, 8, 8)
    pruned, report = pyopt.prune_layers(copy.deepcopy(model), 1.0, [x])
    why = {r["layer"]: r["reason"] for r in report}
    assert "changes the shape (2, 8, 8, 8) -> (2, 16, 4, 4)" in why["layer2.0"]
    assert report.summary["removable"] == 3 and report.summary["removed"] == 3
    assert isinstance(pruned.layer2[0], type(model.layer2[0])) and pruned(x).shape == (2, 5)
    with pytest.raises(ValueError, match="only 3 of the 4 candidate blocks can be removed"):
        pyopt.prune_layers(copy.deepcopy(model), 4, [x])


def test_bert_layers_removed_and_reloaded(tmp_path):
    model = tiny_bert("sdpa", layers=4)
    calib = [bert_inputs(), bert_inputs(3, 5)]
    original = copy.deepcopy(model)
    pruned, report = pyopt.prune_layers(model, 2, calib)
    assert [r["layer"] for r in report] == [f"encoder.layer.{i}" for i in range(4)]
    removed = [int(r["layer"][-1]) for r in report if r["action"] == "removed"]
    assert len(removed) == 2 and all(isinstance(pruned.encoder.layer[i], IdentityBlock) for i in removed)
    reference = copy.deepcopy(original)
    reference.encoder.layer = nn.ModuleList(
        [m for i, m in enumerate(reference.encoder.layer) if i not in removed]
    )
    x = bert_inputs()
    expected = reference(**x).last_hidden_state
    assert torch.equal(pruned(**x).last_hidden_state, expected)
    pyopt.save(pruned, tmp_path / "bert.safetensors")
    fresh = pyopt.load(tiny_bert("sdpa", layers=4), tmp_path / "bert.safetensors")
    assert torch.equal(fresh(**x).last_hidden_state, expected)
    assert sum(isinstance(m, IdentityBlock) for m in fresh.modules()) == 2


def test_channel_and_layer_pruning_compose(tmp_path):
    model = tiny_bert("eager", layers=3)
    x = bert_inputs()
    model, _ = pyopt.prune(model, 0.5, pattern="channel", example_inputs=x)
    model, _ = pyopt.prune_layers(model, 1, [x])
    pyopt.save(model, tmp_path / "m.safetensors")
    fresh = pyopt.load(tiny_bert("eager", layers=3), tmp_path / "m.safetensors")
    assert torch.equal(fresh(**x).last_hidden_state, model(**x).last_hidden_state)


class TupleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, hidden, scale=1.0):
        return hidden + scale * self.fc(hidden), None, hidden.sum()


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([TupleBlock(), TupleBlock()])

    def forward(self, x):
        for b in self.blocks:
            x = b(hidden=x, scale=0.5)[0]
        return x


def test_tuple_outputs_and_keyword_inputs():
    model, report = pyopt.prune_layers(TupleNet(), 1, [torch.randn(3, 4)])
    removed = next(m for m in model.blocks if isinstance(m, IdentityBlock))
    assert (removed.output, removed.extra_outputs, removed.input) == ("tuple", 2, "hidden")
    x = torch.randn(2, 4)
    assert removed(hidden=x, scale=3.0) == (x, None, None)
    assert model(x).shape == (2, 4)


def test_errors():
    model = residual_stack()
    calib = [torch.randn(2, 4)]
    with pytest.raises(ValueError, match="method='cosine'"):
        pyopt.prune_layers(model, 1, calib, method="cosine")
    with pytest.raises(ValueError, match="calib_data must hold at least one batch"):
        pyopt.prune_layers(model, 1, [])
    with pytest.raises(ValueError, match="no candidate block"):
        pyopt.prune_layers(nn.Sequential(nn.Linear(4, 4)), 1, calib)
    with pytest.raises(TypeError, match="n_or_amount must be"):
        pyopt.prune_layers(model, "2", calib)
    with pytest.raises(ValueError, match="n_or_amount=1.5"):
        pyopt.prune_layers(model, 1.5, calib)
    with pytest.raises(ValueError, match="only 4 of the 4"):
        pyopt.prune_layers(model, 5, calib)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        pyopt.prune_layers("model", 1, calib)
    with pytest.raises(ValueError, match="output must be"):
        IdentityBlock(output="dict")
    with pytest.raises(TypeError, match="no hidden states"):
        IdentityBlock()()
    pruned, report = pyopt.prune_layers(model, 1, calib, blocks=["1.0", "1.2"])
    assert [r["layer"] for r in report] == ["1.0", "1.2"] and report.summary["removed"] == 1
