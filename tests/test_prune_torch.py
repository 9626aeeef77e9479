"""torch's own pruning tests (test/nn/test_pruning.py), adapted to pyopt's API.

pyopt.prune plays torch.nn.utils.prune's l1_unstructured / random_unstructured / global_unstructured,
pyopt.unprune plays prune.remove, the masked twin layers' from_dense plays CustomFromMask. Differences, by
design: pyopt keeps the pruned values in the Parameter itself (no weight_orig; weight is zero where pruned);
an int amount on re-pruning is the total count of pruned entries, not a count of further ones (so torch's
"prune 2, then 2 more" is pyopt's "prune 2, then 4"). Not ported: ln_structured / random_structured (pyopt's
structured form removes channels: tests/test_prune_structured.py), PruningContainer internals, LSTM
parameters (pyopt prunes Linear / Conv1d-3d / Embedding layers).
"""

import copy
import pickle

import pytest
import torch
from tolerances import tol
from torch import nn

import pyopt
from pyopt.nn import SparseConv3d, SparseLinear
from pyopt.pruning import masks as M

MODULES = [lambda: nn.Linear(5, 7), lambda: nn.Conv3d(2, 2, 2)]
NAMES = ["weight", "bias"]


def one(module, **kw):
    """pyopt.prune on a single layer: returns the pruned layer."""
    return pyopt.prune(module, **kw)[0]


def test_validate_pruning_amount_init():
    layer = nn.Linear(50, 40)  # 2000 weights
    with pytest.raises(TypeError):
        pyopt.prune_masks(layer, "I'm a string")
    for bad in (1.1, 20.0, -10):
        with pytest.raises(ValueError):
            pyopt.prune_masks(layer, bad)
    for ok in (0.34, 1500, 0, 0.0, 1, 1.0):
        pyopt.prune_masks(layer, ok)


def test_validate_pruning_amount_against_size():
    with pytest.raises(ValueError):
        M.count_to_prune(20, 19)
    assert M.count_to_prune(0.3, 0) == 0
    assert M.count_to_prune(19, 20) == 19
    assert M.count_to_prune(0, 0) == 0
    assert M.count_to_prune(1, 1) == 1
    with pytest.raises(ValueError):
        pyopt.prune_masks(nn.Linear(19, 1), 20)


def test_compute_nparams_to_prune():
    assert M.count_to_prune(0, 15) == 0
    assert M.count_to_prune(10, 15) == 10
    assert M.count_to_prune(1, 15) == 1  # int 1: one unit
    assert M.count_to_prune(1.0, 15) == 15  # float 1.0: all of them
    assert M.count_to_prune(0.4, 17) == 7


@pytest.mark.parametrize("make", MODULES, ids=["linear", "conv3d"])
@pytest.mark.parametrize("name", NAMES)
def test_random_pruning_sizes_and_new_weight(make, name):
    m = make()
    original = getattr(m, name).detach().clone()
    pruned = one(m, amount=0.1, method="random", name=name)
    mask = pruned.mask if name == "weight" else pruned.bias_mask
    assert mask.shape == original.shape == getattr(pruned, name).shape
    # the parameter now holds original * mask (torch: weight = weight_orig * weight_mask)
    assert torch.equal(getattr(pruned, name), original * mask.to(original.dtype))
    assert int((~mask).sum()) == round(0.1 * original.numel())


def test_identity_pruning():
    """A mask of ones changes neither forward nor backward."""
    x = torch.ones(1, 5)
    m = nn.Linear(5, 2)
    y_before = m(x)
    y_before.sum().backward()
    grad_w, grad_b = m.weight.grad.clone(), m.bias.grad.clone()
    assert torch.equal(grad_w, torch.ones_like(m.weight)) and torch.equal(grad_b, torch.ones_like(m.bias))
    m.zero_grad()
    pruned = one(m, amount=0.0)
    y_after = pruned(x)
    assert torch.equal(y_before, y_after)
    y_after.sum().backward()
    assert torch.equal(pruned.weight.grad, grad_w) and torch.equal(pruned.bias.grad, grad_b)
    assert torch.equal(pruned(x), pruned(x))


def _custom(mask):
    m = nn.Linear(5, 2)
    return SparseLinear.from_dense(m, mask.bool()), m


def test_masked_units_get_no_gradient_and_do_not_move():
    mask = torch.ones(2, 5)
    mask[1, 0] = mask[0, 3] = 0
    layer, _ = _custom(mask)
    layer(torch.ones(1, 5)).sum().backward()
    assert torch.equal(layer.weight.grad, mask)  # all ones, except the masked units
    assert torch.equal(layer.bias.grad, torch.ones(2))
    before = layer.weight.detach().clone()
    with torch.no_grad():
        for p in layer.parameters():
            p.sub_(p.grad * 1.0)
    assert layer.weight[1, 0] == before[1, 0] == 0 and layer.weight[0, 3] == before[0, 3] == 0


def test_forward_by_hand():
    mask = torch.zeros(2, 5)
    mask[1, 0] = mask[0, 3] = 1
    dense = nn.Linear(5, 2)
    w = dense.weight.detach().clone()
    layer = SparseLinear.from_dense(dense, mask.bool())
    y = layer(torch.ones(1, 5))
    assert y[0, 0] == w[0, 3] + layer.bias[0]
    assert y[0, 1] == w[1, 0] + layer.bias[1]


@pytest.mark.parametrize("make", MODULES, ids=["linear", "conv3d"])
@pytest.mark.parametrize("name", NAMES)
def test_remove_pruning(make, name):
    """unprune makes the pruning final: plain torch layer, same values, no mask, same forward."""
    m = make()
    pruned = one(m, amount=0.5, method="random", name=name)
    x = torch.randn(1, 5) if isinstance(m, nn.Linear) else torch.randn(1, 2, 3, 3, 3)
    y = pruned(x)
    kept = getattr(pruned, name).detach().clone()
    dense, report = pyopt.unprune(pruned)
    assert type(dense) is type(m) and "mask" not in dict(dense.named_buffers())
    assert torch.equal(getattr(dense, name), kept)
    torch.testing.assert_close(dense(x), y, **tol(torch.float32))  # F.linear vs the masked kernel: order
    assert report[0]["action"] == "unpruned"


def test_remove_pruning_exception():
    for make in MODULES:
        with pytest.raises(ValueError, match="no pruned layer"):
            pyopt.unprune(make())


def test_pruning_id_consistency():
    m = nn.Linear(5, 2, bias=False)
    tensor_id = id(next(iter(m.parameters())))
    pruned = one(m, amount=0.9, method="random")
    assert id(next(iter(pruned.parameters()))) == tensor_id
    dense, _ = pyopt.unprune(pruned)
    assert id(next(iter(dense.parameters()))) == tensor_id


@pytest.mark.parametrize("make", MODULES, ids=["linear", "conv3d"])
@pytest.mark.parametrize("name", NAMES)
def test_random_pruning_pickle(make, name):
    pruned = one(make(), amount=0.1, method="random", name=name)
    copied = pickle.loads(pickle.dumps(pruned))
    assert type(copied) is type(pruned) in (SparseLinear, SparseConv3d)
    assert torch.equal(getattr(copied, name), getattr(pruned, name))


def test_multiple_pruning_calls():
    m = nn.Conv3d(2, 2, 2)
    first = one(m, amount=0.1)
    mask0 = first.mask.clone()
    second = one(first, amount=0.3)
    assert second is first and not (second.mask & ~mask0).any()  # what was pruned stays pruned


def test_l1_unstructured_pruning_by_hand():
    m = nn.Linear(4, 2)
    m.weight = nn.Parameter(torch.tensor([[1, 2, 3, 4], [-4, -3, -2, -1]], dtype=torch.float32))
    m = one(m, amount=2)
    assert torch.equal(m.weight, torch.tensor([[0.0, 2, 3, 4], [-4, -3, -2, 0]]))
    m = one(m, amount=4)  # torch: amount=2 again (2 more); pyopt: 4 in total
    assert torch.equal(m.weight, torch.tensor([[0.0, 0, 3, 4], [-4, -3, 0, 0]]))


def test_l1_unstructured_pruning_with_importance_scores():
    m = nn.Linear(4, 2)
    m.weight = nn.Parameter(torch.tensor([[1, 2, 3, 4], [-4, -3, -2, -1]], dtype=torch.float32))
    scores = {"": torch.tensor([[4, 2, 1, 3], [-3, -1, -2, -4]], dtype=torch.float32)}
    m = one(m, amount=2, importance_scores=scores)
    assert torch.equal(m.weight, torch.tensor([[1.0, 2, 0, 4], [-4, 0, -2, -1]]))
    m = one(m, amount=4, importance_scores=scores)
    assert torch.equal(m.weight, torch.tensor([[1.0, 0, 0, 4], [-4, 0, 0, -1]]))


def test_unstructured_pruning_same_magnitude():
    """Ties: exactly k entries are pruned, not everything at the threshold."""
    m = nn.Linear(7, 10)
    with torch.no_grad():
        m.weight.copy_(2 * torch.randint(-1, 2, (10, 7)))
    mask = pyopt.prune_masks(m, 0.2)[""]
    assert int((~mask).sum()) == M.count_to_prune(0.2, 70)


def _global_pair():
    m, n = nn.Linear(4, 2), nn.Linear(3, 1)
    m.weight = nn.Parameter(torch.tensor([[1, 2, 3, 4], [-4, -3, -2, -1]], dtype=torch.float32))
    n.weight = nn.Parameter(torch.tensor([[0, 0.1, -2]], dtype=torch.float32))
    return nn.Sequential(m, n)


def test_global_pruning():
    model, _ = pyopt.prune(_global_pair(), 4, scope="global")
    assert torch.equal(model[0].weight, torch.tensor([[0.0, 2, 3, 4], [-4, -3, -2, 0]]))
    assert torch.equal(model[1].weight, torch.tensor([[0.0, 0, -2]]))


def test_global_pruning_importance_scores():
    scores = {
        "0": torch.tensor([[4, 2, 1, 3], [-3, -1, -2, -4]], dtype=torch.float32),
        "1": torch.tensor([[0, 10.0, -0.2]]),
    }
    model, _ = pyopt.prune(_global_pair(), 4, scope="global", importance_scores=scores)
    assert torch.equal(model[0].weight, torch.tensor([[1.0, 2, 0, 4], [-4, 0, -2, -1]]))
    assert torch.equal(model[1].weight, torch.tensor([[0, 0.1, 0]]))


def test_custom_mask_combines_with_the_previous_one():
    layer, _ = _custom(torch.tensor([[0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]))
    new = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    masks = pyopt.prune_masks(layer, 0.0)
    layer.set_mask(masks[""] & new)
    assert layer.mask.tolist() == [[False] * 4 + [True], [False, False, True, True, False]]


@pytest.mark.parametrize("make", MODULES, ids=["linear", "conv3d"])
@pytest.mark.parametrize("name", NAMES)
def test_pruning_rollback(make, name, monkeypatch):
    """A failure while computing the masks leaves the model as it was."""
    model = nn.Sequential(make())
    before = copy.deepcopy(model.state_dict())

    def fail(*args, **kwargs):
        raise RuntimeError("HA!")

    monkeypatch.setattr(M, "unstructured_masks", fail)
    with pytest.raises(RuntimeError, match="HA!"):
        pyopt.prune(model, 0.9, name=name)
    assert type(model[0]) is type(make()) and all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items()
    )


def test_pruning_serialization_model(tmp_path):
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 1))
    model, _ = pyopt.prune(model, 0.9, include="0")
    assert "0.mask" in model.state_dict() and "0.weight" in model.state_dict()
    pruned_weight = model[0].weight.detach().clone()
    torch.save(model, tmp_path / "m.pt")
    new_model = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(new_model[0]) is SparseLinear and torch.equal(new_model[0].weight, pruned_weight)
    x = torch.randn(3, 10)
    assert torch.equal(new_model(x), model(x))


def test_pruning_serialization_state_dict(tmp_path):
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 1))
    model, _ = pyopt.prune(model, 0.9, include="0")
    pruned_weight = model[0].weight.detach().clone()
    model, _ = pyopt.unprune(model)  # make pruning permanent, names as in the base architecture
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    new_model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 1))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    new_model.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert torch.equal(new_model[0].weight, pruned_weight)
