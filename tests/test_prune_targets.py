"""pyopt.prune as a drop-in for torch.nn.utils.prune: Parameter identity (an optimizer built before pruning keeps
training), pickling, Conv1d / Conv3d / Embedding targets, bias pruning, importance_scores, pyopt.unprune."""

import copy
import json

import pytest
import torch
import torch.nn.utils.prune as tprune
from tolerances import tol
from torch import nn

import pyopt
from pyopt.nn import SparseLinear, get_param_mask


def test_optimizer_built_before_pruning_keeps_training_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))  # no dead units: every weight moves
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, _ = pyopt.prune(model, 0.5, include="0")  # the next layer dense: every kept weight gets a gradient
    assert type(model[0]) is SparseLinear
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    before = model[0].weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 8)).square().mean().backward()
        opt.step()
    mask = model[0].mask
    assert (model[0].weight[mask] != before[mask]).all()  # the kept weights moved
    assert (model[0].weight[~mask] == 0).all()
    weight = model[0].weight
    model, _ = pyopt.prune(model, 0.8, include="0")  # re-pruning a SparseLinear keeps the Parameter too
    assert model[0].weight is weight and int((~model[0].mask).sum()) == round(0.8 * 128)


@pytest.mark.parametrize("compress", [None, "csr", "dense"])
def test_pruned_sparse_linear_pickles_and_torch_saves(compress, tmp_path):
    import pickle

    model, _ = pyopt.prune(nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)), 0.5)
    if compress:
        pyopt.sparsify(model, format=compress)
    x = torch.randn(4, 12)
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert torch.equal(copied(x), model(x))
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert torch.equal(loaded(x), model(x))
    if compress is None:  # the reloaded layer's mask is re-attached to its parameter
        assert get_param_mask(loaded[0].weight) is loaded[0].mask


@pytest.mark.parametrize(
    "layer,x",
    [
        (nn.Conv1d(3, 5, 3, padding=1), torch.randn(2, 3, 9)),
        (nn.Conv3d(2, 4, (2, 3, 1), stride=2, groups=2), torch.randn(2, 2, 5, 6, 3)),
        (nn.Embedding(11, 6, padding_idx=2), torch.randint(0, 11, (3, 4))),
    ],
    ids=["conv1d", "conv3d", "embedding"],
)
def test_conv1d_conv3d_embedding_targets(layer, x, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(layer)
    ref = copy.deepcopy(layer)
    tprune.l1_unstructured(ref, "weight", 0.6)
    include = [nn.Embedding] if isinstance(layer, nn.Embedding) else None
    weight = layer.weight
    model, report = pyopt.prune(model, 0.6, include=include)
    pruned = model[0]
    assert type(pruned).__name__ == "Sparse" + type(layer).__name__ and pruned.weight is weight
    assert torch.equal(pruned.mask, ref.weight_mask.bool()) and report[0]["type"] == type(layer).__name__
    torch.testing.assert_close(pruned(x), ref(x), **tol(torch.float32))
    if x.is_floating_point():
        pruned(x).square().sum().backward()
        assert (pruned.weight.grad[~pruned.mask] == 0).all()
    pyopt.save(model, tmp_path / "m.safetensors")
    fresh = pyopt.load(nn.Sequential(copy.deepcopy(layer)), tmp_path / "m.safetensors")
    assert torch.equal(fresh(x), model(x)) and torch.equal(fresh[0].mask, pruned.mask)
    dense, _ = pyopt.unprune(model)
    assert type(dense[0]) is type(layer) and dense[0].weight is weight
    unpruned = nn.Sequential(copy.deepcopy(layer))
    unpruned.load_state_dict(dense.state_dict())  # plain torch names again
    torch.testing.assert_close(unpruned(x), ref(x), **tol(torch.float32))


def test_embedding_tables_are_opt_in():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    assert list(pyopt.prune_masks(model, 0.5)) == ["1"]
    assert list(pyopt.prune_masks(model, 0.5, include=["*"])) == ["0", "1"]


@pytest.mark.parametrize(
    "make", [lambda: nn.Linear(6, 10), lambda: nn.Conv2d(3, 10, 3)], ids=["linear", "conv2d"]
)
def test_bias_pruning(make):
    layer = make()
    bias = layer.bias
    ref = copy.deepcopy(layer)
    tprune.l1_unstructured(ref, "bias", 0.4)
    model, report = pyopt.prune(nn.Sequential(layer), 0.4, name="bias")
    pruned = model[0]
    assert pruned.bias is bias and torch.equal(pruned.bias_mask, ref.bias_mask.bool())
    assert report[0]["param"] == "bias" and report[0]["nonzero"] == 6 and pruned.mask.all()
    x = torch.randn(2, 6) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(pruned(x), ref(x), **tol(torch.float32))
    opt = torch.optim.AdamW(pruned.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        pruned(x).square().mean().backward()
        opt.step()
    assert (pruned.bias[~pruned.bias_mask] == 0).all()
    cfg = json.loads(json.dumps(pruned.extra_config()))
    clone = type(pruned).from_config(cfg)
    clone.load_state_dict(pruned.state_dict())
    assert torch.equal(clone(x), pruned(x))


def test_name_and_importance_scores_errors():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="name='foo'"):
        pyopt.prune(model, 0.5, name="foo")
    with pytest.raises(ValueError, match="a bias is a vector"):
        pyopt.prune(model, None, pattern="2:4", name="bias")
    with pytest.raises(ValueError, match="none of the selected layers has a bias"):
        pyopt.prune(nn.Sequential(nn.Linear(4, 4, bias=False)), 0.5, name="bias")
    with pytest.raises(ValueError, match="importance_scores names 'x'"):
        pyopt.prune(model, 0.5, importance_scores={"x": torch.ones(3, 4)})
    with pytest.raises(ValueError, match=r"importance_scores\['0'\] must be a tensor of the weight's shape"):
        pyopt.prune(model, 0.5, importance_scores={"0": torch.ones(4, 3)})
    with pytest.raises(ValueError, match="method='random' does not use it"):
        pyopt.prune(model, 0.5, method="random", importance_scores={"0": torch.ones(3, 4)})
    with pytest.raises(TypeError, match="importance_scores must be a dict"):
        pyopt.prune(model, 0.5, importance_scores=[torch.ones(3, 4)])


def test_unprune_compressed_layers():
    lin = nn.Linear(16, 8)
    mask = torch.rand(8, 16) > 0.6
    blocks = torch.rand(4, 4) > 0.5  # (2, 4) blocks
    for fmt, block, m in (
        ("csr", None, mask),
        ("bsr", (2, 4), blocks.repeat_interleave(2, 0).repeat_interleave(4, 1)),
        ("dense", None, mask),
    ):
        layer = SparseLinear.from_dense(copy.deepcopy(lin), m).compress(format=fmt, block=block)
        dense = layer.to_dense()
        assert torch.equal(dense.weight, (lin.weight * m).detach()), fmt
    int8 = SparseLinear.from_dense(copy.deepcopy(lin), mask).compress(format="csr").quantize_int8()
    with pytest.raises(ValueError, match="csr_int8 layer holds int8 weights"):
        pyopt.unprune(nn.Sequential(int8))
