"""pyopt.prune / prune_masks / SparseConv2d / sparsity_schedule / GradualPruner.

Masks are checked against torch.nn.utils.prune (the same weights, the same amounts), N:M and block masks
against brute-force references, channel pruning by running the pruned model against the original with the
removed channels' contributions zeroed (float64, so only summation order can differ).
"""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as tprune
from tolerances import tol
from torch import nn

import pyopt
from pyopt.nn import SparseConv2d, get_param_mask
from pyopt.nn.registry import MODULES

SparseLinear = getattr(pyopt.nn, "SparseLinear", None)
needs_sparse_linear = pytest.mark.skipif(
    SparseLinear is None, reason="pyopt.nn.SparseLinear (sparse family, issue 4) is not in this build yet"
)


def conv_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 12, (3, 1), stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 3 * 4, 7),
    )


def one_layer(kind: str, shape, ties: bool = False) -> nn.Module:
    layer = nn.Linear(shape[1], shape[0]) if kind == "linear" else nn.Conv2d(shape[1], shape[0], shape[2:])
    if ties:  # few distinct magnitudes: exercises the tie-breaking
        with torch.no_grad():
            layer.weight.copy_(torch.randint(-3, 4, layer.weight.shape).to(layer.weight.dtype))
    return nn.Sequential(layer)


# ---------------------------------------------------------------- unstructured vs torch.nn.utils.prune
LAYERS = [("linear", (7, 13)), ("linear", (1, 1003)), ("conv", (5, 3, 3, 3)), ("conv", (4, 6, 1, 1))]
AMOUNTS = [0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 1.0, 0, 1, 5]


@pytest.mark.parametrize("kind,shape", LAYERS, ids=lambda v: str(v))
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_magnitude_layer_masks_equal_torch_l1_unstructured(kind, shape, ties):
    for seed in range(6):
        torch.manual_seed(seed)
        model = one_layer(kind, shape, ties)
        for amount in AMOUNTS:
            mask = pyopt.prune_masks(model, amount)["0"]
            ref = copy.deepcopy(model[0])
            tprune.l1_unstructured(ref, "weight", amount)
            assert mask.dtype == torch.bool
            assert torch.equal(mask, ref.weight_mask.bool()), (seed, amount)


@pytest.mark.parametrize("kind,shape", LAYERS[:3], ids=lambda v: str(v))
def test_random_layer_masks_equal_torch_random_unstructured(kind, shape):
    model = one_layer(kind, shape)
    for seed, amount in [(0, 0.3), (1, 0.5), (2, 4), (3, 0.9)]:
        ref = copy.deepcopy(model[0])
        torch.manual_seed(seed)
        mask = pyopt.prune_masks(model, amount, method="random")["0"]
        torch.manual_seed(seed)
        tprune.random_unstructured(ref, "weight", amount)
        assert torch.equal(mask, ref.weight_mask.bool())


def test_random_uses_generator():
    model = one_layer("linear", (16, 32))
    masks = [
        pyopt.prune_masks(model, 0.5, method="random", generator=torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert torch.equal(masks[0]["0"], masks[1]["0"])
    assert not torch.equal(masks[0]["0"], masks[2]["0"])
    assert int((~masks[0]["0"]).sum()) == 256


@pytest.mark.parametrize("method", ["magnitude", "random"])
@pytest.mark.parametrize("amount", [0.2, 0.6, 0.95, 100])
def test_global_masks_equal_torch_global_unstructured(method, amount):
    model = conv_net()
    ref = copy.deepcopy(model)
    torch.manual_seed(3)
    masks = pyopt.prune_masks(model, amount, method=method, scope="global")
    torch.manual_seed(3)
    params = [(ref[i], "weight") for i in (0, 2, 5)]
    pruning = tprune.L1Unstructured if method == "magnitude" else tprune.RandomUnstructured
    tprune.global_unstructured(params, pruning_method=pruning, amount=amount)
    for i in ("0", "2", "5"):
        assert torch.equal(masks[i], ref.get_submodule(i).weight_mask.bool())
    if method == "magnitude":  # global really ranks across layers: layers end at different sparsities
        assert len({round(float((~m).float().mean()), 3) for m in masks.values()}) > 1


# ---------------------------------------------------------------- N:M and blocks vs brute force
@pytest.mark.parametrize("nm", ["2:4", "1:4", "4:8", "1:2"])
@pytest.mark.parametrize("kind,shape", [("linear", (5, 24)), ("conv", (4, 8, 1, 1)), ("conv", (3, 4, 2, 3))])
def test_nm_keeps_n_largest_of_every_m(nm, kind, shape):
    n, m = map(int, nm.split(":"))
    model = one_layer(kind, shape)
    mask = pyopt.prune_masks(model, None, pattern=nm)["0"]
    w = model[0].weight.detach().reshape(shape[0], -1, m)
    groups = mask.reshape(shape[0], -1, m)
    assert (groups.sum(-1) == n).all()
    kept_min = w.abs().masked_fill(~groups, float("inf")).amin(-1)
    dropped_max = w.abs().masked_fill(groups, -1).amax(-1)
    assert (kept_min >= dropped_max).all()
    assert torch.equal(mask, pyopt.prune_masks(model, 1 - n / m, pattern=nm)["0"])


def test_nm_random_and_errors():
    model = one_layer("linear", (6, 16))
    mask = pyopt.prune_masks(
        model, None, method="random", pattern="2:4", generator=torch.Generator().manual_seed(0)
    )["0"]
    assert (mask.reshape(6, 4, 4).sum(-1) == 2).all()
    with pytest.raises(ValueError, match="pattern='2:4'.*does not divide the input dimension 13"):
        pyopt.prune_masks(one_layer("linear", (3, 13)), None, pattern="2:4")
    with pytest.raises(ValueError, match="does not divide the input dimension 27"):
        pyopt.prune_masks(one_layer("conv", (4, 3, 3, 3)), None, pattern="2:4")
    with pytest.raises(ValueError, match="amount=0.3"):
        pyopt.prune_masks(model, 0.3, pattern="2:4")
    with pytest.raises(ValueError, match="scope='global'"):
        pyopt.prune_masks(model, None, pattern="2:4", scope="global")


def block_reference(w: torch.Tensor, amount: float, bh: int, bw: int) -> torch.Tensor:
    w2 = w.detach().reshape(w.shape[0], -1)
    norms = {}
    for r in range(0, w2.shape[0], bh):
        for c in range(0, w2.shape[1], bw):
            norms[(r, c)] = w2[r : r + bh, c : c + bw].double().norm().item()
    pruned = sorted(norms, key=norms.get)[: round(amount * len(norms))]
    mask = torch.ones_like(w2, dtype=torch.bool)
    for r, c in pruned:
        mask[r : r + bh, c : c + bw] = False
    return mask.reshape(w.shape)


@pytest.mark.parametrize("block", [(1, 4), (2, 2), (4, 1), (3, 3)])
@pytest.mark.parametrize("amount", [0.25, 0.5, 0.9])
def test_block_masks_by_block_norm(block, amount):
    model = nn.Sequential(nn.Linear(24, 12), nn.Conv2d(4, 12, 3))
    masks = pyopt.prune_masks(model, amount, pattern=block)
    for name, layer in [("0", model[0]), ("1", model[1])]:
        assert torch.equal(masks[name], block_reference(layer.weight, amount, *block))


def test_block_global_and_errors():
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 8))
    masks = pyopt.prune_masks(model, 0.5, pattern=(4, 4), scope="global")
    assert sum(int((~m).sum()) for m in masks.values()) == 96  # half of the 12 blocks of 16
    masks = pyopt.prune_masks(model, 3, pattern=(4, 4))  # an int counts blocks
    assert all(int((~m).sum()) == 48 for m in masks.values())
    with pytest.raises(ValueError, match=r"pattern=\(3, 4\).*8x16"):
        pyopt.prune_masks(model, 0.5, pattern=(3, 4))
    with pytest.raises(ValueError, match="amount=7 is larger than the number of blocks"):
        pyopt.prune_masks(model, 7, pattern=(4, 4))


def test_block_random_keeps_whole_blocks():
    model = nn.Sequential(nn.Linear(16, 8))
    mask = pyopt.prune_masks(
        model, 0.5, pattern=(2, 4), method="random", generator=torch.Generator().manual_seed(1)
    )["0"]
    blocks = mask.reshape(4, 2, 4, 4).permute(0, 2, 1, 3).reshape(16, 8)
    assert ((blocks.all(1)) | (~blocks.any(1))).all() and int(blocks.all(1).sum()) == 8


# ---------------------------------------------------------------- prune(): swapping layers, re-pruning, report
def test_prune_conv_model_swaps_layers_and_reports():
    model = conv_net()
    x = torch.randn(2, 3, 8, 7)
    model, report = pyopt.prune(model, 0.6, exclude=[nn.Linear])
    assert [type(m) for m in model] == [SparseConv2d, nn.ReLU, SparseConv2d, nn.ReLU, nn.Flatten, nn.Linear]
    assert [row["layer"] for row in report] == ["0", "2"]
    assert all(
        row["sparsity"] == pytest.approx(1 - round(0.4 * row["params"]) / row["params"], abs=1e-9)
        for row in report
    )
    total = sum(r["params"] for r in report)
    assert report.summary["sparsity"] == pytest.approx(1 - sum(r["nonzero"] for r in report) / total)
    assert "sparsity" in str(report) and json.loads(report.to_json())["rows"]
    assert model(x).shape == (2, 7)


def test_reprune_intersects_and_reaches_target():
    torch.manual_seed(5)
    model, _ = pyopt.prune(one_layer("conv", (6, 4, 3, 3)), 0.5)
    first = model[0].mask.clone()
    weight = model[0].weight
    model, _ = pyopt.prune(model, 0.3)  # lower target: nothing comes back
    assert torch.equal(model[0].mask, first)
    model, report = pyopt.prune(model, 0.8)
    assert model[0].weight is weight  # same Parameter: optimizers stay valid
    assert not (model[0].mask & ~first).any()
    assert report[0]["nonzero"] == 216 - round(0.8 * 216)
    torch.manual_seed(5)  # the same weights again
    fresh = pyopt.prune_masks(one_layer("conv", (6, 4, 3, 3)), 0.8)["0"]
    assert torch.equal(model[0].mask, fresh)  # gradual magnitude == one-shot magnitude for distinct |w|
    assert (model[0].weight[~model[0].mask] == 0).all()


def test_include_exclude():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1)), nn.Flatten(), nn.Linear(4, 2)
    )
    assert list(pyopt.prune_masks(model, 0.5, include="0.*")) == ["0.0", "0.1"]
    assert list(pyopt.prune_masks(model, 0.5, include=["0.1", nn.Linear])) == ["0.1", "2"]
    assert list(pyopt.prune_masks(model, 0.5, exclude=["*.0", nn.Linear])) == ["0.1"]
    assert list(pyopt.prune_masks(model, 0.5, include=nn.Conv2d, exclude="0.1")) == ["0.0"]
    with pytest.raises(TypeError, match="include must be"):
        pyopt.prune_masks(model, 0.5, include=[3])
    with pytest.raises(TypeError, match="exclude must be"):
        pyopt.prune_masks(model, 0.5, exclude=int)


def test_empty_and_single_layer_models():
    masks = pyopt.prune_masks(nn.Sequential(nn.Linear(0, 5), nn.Conv2d(3, 4, 1)), 0.5)
    assert masks["0"].shape == (5, 0) and int((~masks["1"]).sum()) == 6
    model, report = pyopt.prune(nn.Sequential(nn.ReLU()), 0.5)
    assert len(report) == 0 and report.summary["sparsity"] == 0.0
    conv = nn.Conv2d(2, 3, 3)
    pruned, _ = pyopt.prune(conv, 0.5)
    assert type(pruned) is SparseConv2d and pruned.weight is conv.weight


BAD = [
    (dict(amount=-0.1), ValueError, "amount=-0.1"),
    (dict(amount=1.5), ValueError, "amount=1.5"),
    (dict(amount=float("nan")), ValueError, "amount=nan"),
    (dict(amount=10_000), ValueError, "amount=10000 is larger"),
    (dict(amount=-2), ValueError, "amount=-2"),
    (dict(amount=True), TypeError, "amount must be"),
    (dict(amount="0.5"), TypeError, "amount must be"),
    (dict(amount=0.5, method="l2"), ValueError, "method='l2'"),
    (dict(amount=0.5, scope="model"), ValueError, "scope='model'"),
    (dict(amount=0.5, pattern="sparse"), ValueError, "pattern='sparse'"),
    (dict(amount=0.5, pattern="4:2"), ValueError, "pattern='4:2'"),
    (dict(amount=0.5, pattern=(0, 4)), ValueError, r"pattern=\(0, 4\)"),
    (dict(amount=0.5, pattern=(2,)), ValueError, r"pattern=\(2,\)"),
    (dict(amount=0.5, generator=0), TypeError, "generator must be"),
    (dict(amount=0.5, pattern="channel", scope="global"), ValueError, "scope='global'"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pyopt.prune(conv_net(), **kwargs)


def test_model_must_be_module():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        pyopt.prune(torch.randn(3, 3), 0.5)


# ---------------------------------------------------------------- Linear -> SparseLinear (sparse family)
@needs_sparse_linear
def test_prune_linear_swaps_to_sparse_linear():
    model = nn.Sequential(nn.Linear(13, 9), nn.ReLU(), nn.Linear(9, 4))
    dense = copy.deepcopy(model)
    masks = pyopt.prune_masks(model, 0.7)
    model, report = pyopt.prune(model, 0.7)
    assert type(model[0]) is SparseLinear and type(model[2]) is SparseLinear
    x = torch.randn(5, 13)
    for i in (0, 2):
        assert torch.equal(model[i].mask, masks[str(i)])
        with torch.no_grad():
            dense[i].weight.mul_(masks[str(i)])
    torch.testing.assert_close(model(x), dense(x), **tol(torch.float32))
    before = model[0].mask.clone()
    model, _ = pyopt.prune(model, 0.9, pattern="unstructured")
    assert not (model[0].mask & ~before).any() and report[0]["type"] == "Linear"
    assert 1 - model[0].mask.float().mean().item() == pytest.approx(round(0.9 * 117) / 117)


class ContractSparseLinear(nn.Module):
    """The contract prune relies on from pyopt.nn.SparseLinear, minimal: exercises prune's Linear path without it."""

    def __init__(self, linear, mask):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.register_buffer("mask", mask.clone())
        with torch.no_grad():
            self.weight.mul_(mask)

    @classmethod
    def from_dense(cls, linear, mask):
        return cls(linear, mask)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


def test_prune_linear_path_against_the_contract(monkeypatch):
    monkeypatch.setattr("pyopt.pruning.api.SparseLinear", ContractSparseLinear)
    monkeypatch.setattr("pyopt.pruning.select.SparseLinear", ContractSparseLinear)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    weight = model[0].weight
    masks = pyopt.prune_masks(model, 0.5, pattern=(2, 4))
    model, report = pyopt.prune(model, 0.5, pattern=(2, 4))
    assert type(model[0]) is ContractSparseLinear and type(model[2][0]) is ContractSparseLinear
    assert torch.equal(model[0].mask, masks["0"]) and torch.equal(model[2][0].mask, masks["2.0"])
    before = model[0].mask.clone()
    model, report = pyopt.prune(model, 0.75, pattern=(2, 4))  # re-prune: rebuilt around the same tensors
    assert model[0].weight is weight and not (model[0].mask & ~before).any()
    assert report[0]["type"] == "Linear" and report[0]["nonzero"] == 24
    assert model(torch.randn(3, 12)).shape == (3, 4)


# ---------------------------------------------------------------- SparseConv2d
CONVS = [
    dict(in_channels=3, out_channels=5, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, dilation=(2, 1)),
    dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, bias=False),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", padding_mode="circular"),
    dict(in_channels=1, out_channels=1, kernel_size=1),
]


def sparse_conv(cfg, dtype=torch.float32, sparsity=0.6):
    conv = nn.Conv2d(**cfg, dtype=dtype)
    mask = torch.rand(conv.weight.shape) >= sparsity
    reference = copy.deepcopy(conv)
    with torch.no_grad():
        reference.weight.mul_(mask)
    return SparseConv2d.from_dense(conv, mask), reference, mask


@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sparse_conv_forward_backward_match_masked_conv(cfg, dtype):
    layer, reference, mask = sparse_conv(cfg, dtype)
    x = torch.randn(2, 9, 7, cfg["in_channels"], dtype=dtype).permute(0, 3, 1, 2)  # non-contiguous
    x_ref = x.detach().clone().requires_grad_()
    x.requires_grad_()
    out, ref = layer(x), reference(x_ref)
    torch.testing.assert_close(out, ref, **tol(dtype))
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, **tol(dtype))
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad * mask, **tol(dtype))
    assert (layer.weight.grad[~mask] == 0).all()
    assert layer(x[:0]).shape[0] == 0  # empty batch


def test_sparse_conv_gradcheck():
    layer, _, _ = sparse_conv(dict(in_channels=2, out_channels=3, kernel_size=2, padding=1), torch.float64)
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    w, b = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_()
    # numerical d/dw of a pruned entry is 0 (the forward ignores it): gradcheck also checks the masked grad_W
    assert torch.autograd.gradcheck(
        lambda x, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,)), (x, w, b)
    )


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
        lambda p: torch.optim.AdamW(p, lr=0.1),
    ],
    ids=["sgd", "adamw"],
)
def test_sparse_conv_pruned_weights_stay_zero_in_training(make_opt):
    layer, _, mask = sparse_conv(CONVS[0])
    opt = make_opt(layer.parameters())
    for _ in range(4):
        opt.zero_grad()
        layer(torch.randn(3, 3, 6, 6)).square().mean().backward()
        opt.step()
    assert (layer.weight[~mask] == 0).all() and (layer.weight[mask] != 0).all()


def test_sparse_conv_mask_protocol_and_round_trip():
    conv = nn.Conv2d(4, 6, 3, groups=2, padding=(1, 0))
    mask = torch.rand(conv.weight.shape) > 0.5
    layer = SparseConv2d.from_dense(conv, mask)
    assert layer.weight is conv.weight and layer.bias is conv.bias  # shares the dense layer's parameters
    assert get_param_mask(layer.weight) is layer.mask and layer.mask.dtype == torch.bool
    assert MODULES["SparseConv2d"] is SparseConv2d
    layer.double()
    assert layer.mask.dtype == torch.bool and get_param_mask(layer.weight) is layer.mask
    cfg = json.loads(json.dumps(layer.extra_config()))
    clone = SparseConv2d.from_config(cfg)
    clone.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert torch.equal(clone(x), layer(x)) and torch.equal(clone.mask, layer.mask)
    assert get_param_mask(clone.weight) is clone.mask
    copied = copy.deepcopy(layer)
    copied(x)
    assert get_param_mask(copied.weight) is copied.mask


def test_sparse_conv_compress_is_dense_fallback():
    layer, reference, _ = sparse_conv(CONVS[1])
    x = torch.randn(2, 4, 9, 8)
    expected = reference(x)
    assert layer.compress() is layer and layer.compressed
    torch.testing.assert_close(layer(x), expected, **tol(torch.float32))
    assert SparseConv2d.from_config(layer.extra_config()).compressed


def test_sparse_conv_bad_masks():
    conv = nn.Conv2d(2, 3, 3)
    with pytest.raises(ValueError, match="mask shape"):
        SparseConv2d.from_dense(conv, torch.ones(3, 2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        SparseConv2d.from_dense(conv, torch.ones(conv.weight.shape))
    with pytest.raises(TypeError, match="conv must be an nn.Conv2d"):
        SparseConv2d.from_dense(nn.Linear(2, 3), torch.ones(3, 2, dtype=torch.bool))


# ---------------------------------------------------------------- schedule
def test_sparsity_schedule_hand_computed():
    s = pyopt.sparsity_schedule
    # s_t = 0.9 + (0 - 0.9) * (1 - (t - 10) / 100) ** 3
    assert s(0, 0.9, 10, 110) == 0.0 and s(9, 0.9, 10, 110) == 0.0
    assert s(10, 0.9, 10, 110) == pytest.approx(0.0)
    assert s(60, 0.9, 10, 110) == pytest.approx(0.9 - 0.9 * 0.125)  # 0.7875
    assert s(35, 0.9, 10, 110) == pytest.approx(0.9 - 0.9 * 0.75**3)  # 0.520312...
    assert s(110, 0.9, 10, 110) == 0.9 and s(10**6, 0.9, 10, 110) == 0.9
    # frequency 20: t=39 holds the value of t=30; initial 0.2: 0.8 + (0.2 - 0.8) * (1 - 20/100) ** 3
    assert s(39, 0.8, 10, 110, initial_sparsity=0.2, frequency=20) == pytest.approx(0.8 - 0.6 * 0.512)
    assert s(5, 0.5, 5, 5) == 0.5  # begin == end: a single step
    with pytest.raises(ValueError, match="final_sparsity=1.2"):
        s(0, 1.2, 0, 10)
    with pytest.raises(ValueError, match="end_step=3"):
        s(0, 0.5, 5, 3)
    with pytest.raises(ValueError, match="frequency=0"):
        s(0, 0.5, 0, 10, frequency=0)
    with pytest.raises(TypeError, match="step must be an int"):
        s(1.5, 0.5, 0, 10)


def test_gradual_pruner_grows_masks_during_training():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = pyopt.GradualPruner(model, 0.8, begin_step=2, end_step=10, frequency=4, optimizer=opt)
    sparsities, previous = [], None
    for step in range(13):
        opt.zero_grad()
        model(torch.randn(2, 3, 7, 7)).square().mean().backward()
        opt.step()
        report = pruner.step()
        assert (report is not None) == (step in (2, 6, 10))
        if report is not None:
            mask = model[2].mask.clone()
            if previous is not None:
                assert not (mask & ~previous).any()
            previous = mask
            sparsities.append(report.summary["sparsity"])
        if isinstance(model[0], SparseConv2d):
            assert (model[0].weight[~model[0].mask] == 0).all()
    assert sparsities == pytest.approx([0.0, 0.8 - 0.8 * 0.125, 0.8], abs=3e-3)
    with pytest.raises(ValueError, match="pattern='2:4'"):
        pyopt.GradualPruner(model, 0.5, 0, 10, pattern="2:4")
