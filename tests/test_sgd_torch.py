"""torch's own optimizer tests, adapted to FusedSGD (drop-in for torch.optim.SGD).

Ported from torch's test/test_optim.py (TestOptimRenewed: the generic behaviours every optimizer passes,
driven by `optim_inputs_func_sgd`, the SGD input grid of torch/testing/_internal/common_optimizers.py, and
the error inputs of `optim_error_inputs_func_sgd`); torch's GradScaler tests are in
test_sgd_grad_scaler.py. The facts carry over; the code is this project's. Where torch compares two
implementations of SGD
(foreach vs for-loop), FusedSGD is compared with torch.optim.SGD(foreach=False): bit-identical in float32
and float64 (pyopt/optim/fused_sgd.py).
"""

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn import Parameter

from pyopt.optim import FusedSGD


# torch's optim_inputs_func_sgd: every configuration the generic tests run.
def sgd_inputs():
    return [
        ({}, "default"),
        ({"lr": 1e-2}, "non-default lr"),
        ({"lr": torch.tensor(0.001)}, "tensor lr"),
        ({"weight_decay": 0.5}, "non-zero weight_decay"),
        ({"momentum": 0.9}, "momentum"),
        ({"weight_decay": 0.1, "maximize": True}, "maximize"),
        ({"momentum": 0.9, "dampening": 0.5}, "dampening"),
        ({"momentum": 0.9, "weight_decay": 0.1}, "weight_decay w/ momentum"),
        ({"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}, "nesterov"),
    ]


# torch's _get_optim_inputs_including_global_cliquey_kwargs adds foreach / fused to each input: FusedSGD
# accepts them (one implementation, so they change nothing).
def all_inputs():
    out = []
    for kwargs, desc in sgd_inputs():
        out.append((kwargs, desc))
        for extra in ({"foreach": False}, {"foreach": True}, {"fused": True}):
            out.append(({**kwargs, **extra}, f"{desc} {extra}"))
    return out


def fresh(kwargs):
    """A copy of the kwargs with a fresh tensor lr (the optimizer keeps the tensor object)."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


# ----------------------------------------------------------------------------------------------- errors
def test_errors():
    p, p2 = Parameter(torch.randn(1, 1)), Parameter(torch.randn(1, 1))
    with pytest.raises(TypeError, match="params argument given to the optimizer should be an iterable"):
        FusedSGD(p)
    with pytest.warns(UserWarning, match="a parameter group with duplicate parameters"):
        FusedSGD([p, p])
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        FusedSGD([{"params": p}, {"params": p}])
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        FusedSGD([p], lr=torch.tensor([0.001, 0.001]))
    with pytest.raises(ValueError, match="all optimizer params should be with/without names"):
        FusedSGD([("weight", p), p2])
    with pytest.raises(ValueError, match="cannot add param group with names to the optimizer"):
        FusedSGD([{"params": [p], "lr": 1e-2}, {"params": [("weight", p2)]}])
    with pytest.raises(ValueError, match="Invalid momentum value: -0.5"):
        FusedSGD([p], lr=1e-2, momentum=-0.5)


def test_inputs_do_not_name_implementation_flags():
    for kwargs, _ in sgd_inputs():
        assert not {"foreach", "fused", "differentiable"} & set(kwargs)


# ------------------------------------------------------------------------------------ goes right direction
def _weight_bias_closure(optimizer, weight, bias, x):
    def closure():
        optimizer.zero_grad()
        loss = (weight.mv(x) + bias).pow(2).sum()
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("contiguous", [True, False])
def test_goes_right_direction(contiguous):
    for kwargs, desc in all_inputs():
        if contiguous:
            weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
        else:
            weight = Parameter(torch.randn(10, 5, 2)[..., 0])
            bias = Parameter(torch.randn(10, 2)[..., 0])
        x = torch.randn(5)
        opt = FusedSGD([weight, bias], **fresh(kwargs))
        closure = _weight_bias_closure(opt, weight, bias, x)
        initial = closure().item()
        for _ in range(20):
            opt.step(closure)
        if kwargs.get("maximize", False):
            assert closure().item() > initial, desc
        else:
            assert closure().item() < initial, desc


def test_lr_schedulers_go_right_direction():
    from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR

    for make in (
        lambda o: StepLR(o, gamma=0.9, step_size=10),
        lambda o: ExponentialLR(o, gamma=0.99),
        lambda o: ReduceLROnPlateau(o),
    ):
        weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
        x = torch.randn(5)
        opt = FusedSGD([weight, bias], lr=1e-2, momentum=0.9)
        sched = make(opt)
        closure = _weight_bias_closure(opt, weight, bias, x)
        initial = closure().item()
        for _ in range(20):
            loss = opt.step(closure)
            sched.step(loss.item()) if isinstance(sched, ReduceLROnPlateau) else sched.step()
        assert closure().item() < initial


# ------------------------------------------------------------------------------------------------ complex
def test_complex_matches_real_view():
    for kwargs, desc in all_inputs():
        complex_params = [
            torch.randn(10, 5, dtype=torch.complex64, requires_grad=True),
            torch.randn(10, dtype=torch.complex64, requires_grad=True),
            torch.randn(10, 5, dtype=torch.float32, requires_grad=True),  # real and complex mixed
        ]
        real_params = [
            (torch.view_as_real(p) if p.is_complex() else p).detach().clone().requires_grad_()
            for p in complex_params
        ]
        opt_c, opt_r = FusedSGD(complex_params, **fresh(kwargs)), FusedSGD(real_params, **fresh(kwargs))
        for _ in range(3):
            for c, r in zip(complex_params, real_params, strict=True):
                r.grad = torch.randn_like(r)
                c.grad = torch.view_as_complex(r.grad.clone()) if c.is_complex() else r.grad.clone()
            opt_c.step()
            opt_r.step()
            for c, r in zip(complex_params, real_params, strict=True):
                assert torch.equal(torch.view_as_real(c) if c.is_complex() else c, r), desc


def test_complex_matches_torch():
    # torch.optim.SGD steps a complex tensor in complex arithmetic (a*b then +, no fma): ~1 ulp apart.
    p = torch.randn(33, dtype=torch.complex128, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    cfg = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    opt, opt_ref = FusedSGD([p], **cfg), torch.optim.SGD([q], foreach=False, **cfg)
    for _ in range(5):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
        opt.step()
        opt_ref.step()
    torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], opt_ref.state[q]["momentum_buffer"])


# ------------------------------------------------------------------------------------------- param groups
def test_param_groups_weight_decay():
    for kwargs, desc in all_inputs():
        weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
        x = torch.randn(5)
        bias_kwargs = {**fresh(kwargs), "weight_decay": 0.0}
        opt = FusedSGD([dict(params=[weight], **fresh(kwargs)), dict(params=[bias], **bias_kwargs)])
        initial = (weight.mv(x) + bias).pow(2).sum().item()
        for _ in range(20):
            opt.zero_grad()
            loss = (weight.mv(x) + bias).pow(2).sum()
            loss.backward()
            opt.step()
        assert (loss.item() > initial) if kwargs.get("maximize") else (loss.item() < initial), desc


def test_param_groups_lr():
    for kwargs, desc in all_inputs():
        kwargs = fresh(kwargs)
        if "lr" not in kwargs or kwargs["lr"] == 0:
            kwargs["lr"] = 1e-3
        weight, bias = Parameter(torch.randn(10, 5)), Parameter(torch.randn(10))
        irrelevant = Parameter(torch.randn(2))
        before = irrelevant.detach().clone()
        x = torch.randn(5)
        opt = FusedSGD([dict(params=[weight, bias], **kwargs), dict(params=[irrelevant])], lr=1e-28)
        initial = (weight.mv(x) + bias).pow(2).sum().item()
        for _ in range(20):
            opt.zero_grad()
            loss = (weight.mv(x) + bias).pow(2).sum()
            loss.backward()
            irrelevant.grad = torch.rand_like(irrelevant)
            opt.step()
        assert (loss.item() > initial) if kwargs.get("maximize") else (loss.item() < initial), desc
        assert torch.equal(irrelevant, before), desc  # lr 1e-28: below float32 resolution of the params


# ---------------------------------------------------------------------------------------------- no-op steps
def test_step_is_noop_when_params_have_no_grad():
    params = [torch.randn(2, 3, requires_grad=False) for _ in range(2)]
    old = [p.clone() for p in params]
    for kwargs, desc in all_inputs():
        opt = FusedSGD(params, **fresh(kwargs))
        assert opt.step(lambda: torch.tensor([1.0])).item() == 1.0  # the closure's loss is returned
        assert all(torch.equal(a, b) for a, b in zip(old, params, strict=True)), desc
        assert len(opt.state) == 0


def test_step_is_noop_for_zero_grads():
    param = torch.randn(5, 1, requires_grad=True)
    old = param.detach().clone()
    for kwargs, desc in all_inputs():
        if kwargs.get("weight_decay", 0) != 0:  # decays the params even with zero grads
            continue
        opt = FusedSGD([param], **fresh(kwargs))
        param.grad = torch.zeros_like(param)
        opt.step(lambda: torch.tensor([1.0]))
        assert torch.equal(old, param), desc


def test_zero_grad_both_ways():
    p = Parameter(torch.randn(4))
    opt = FusedSGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(4)
    opt.step()
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and not p.grad.any()
    opt.zero_grad()
    assert p.grad is None


def test_optimizer_can_be_printed():
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for kwargs, _ in all_inputs():
        text = repr(FusedSGD(params, **fresh(kwargs)))
        assert text.startswith("FusedSGD (") and "momentum" in text


# ------------------------------------------------------------------------------------------- state dicts
def test_state_dict_deterministic():
    for kwargs, desc in all_inputs():
        weight, bias = Parameter(torch.randn(2, 3)), Parameter(torch.randn(2))
        x = torch.randn(3, requires_grad=True)
        opt = FusedSGD([weight, bias], **fresh(kwargs))
        closure = _weight_bias_closure(opt, weight, bias, x)
        for _ in range(10):
            opt.step(closure)
        with torch.no_grad():
            weight_c, bias_c = Parameter(weight.clone()), Parameter(bias.clone())
        opt_c = FusedSGD([weight_c, bias_c], **fresh(kwargs))
        closure_c = _weight_bias_closure(opt_c, weight_c, bias_c, x)
        saved = copy.deepcopy(opt.state_dict())
        opt_c.load_state_dict(copy.deepcopy(saved))
        for _ in range(10):
            opt.step(closure)
            opt_c.step(closure_c)
            assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c), desc
        torch.testing.assert_close(opt.state_dict(), opt_c.state_dict(), rtol=0, atol=0)
        # repeated groups have identical representations
        opt_c.param_groups.extend(opt_c.param_groups)
        assert opt.state_dict()["param_groups"][-1] == opt_c.state_dict()["param_groups"][-1]


def test_can_load_older_state_dict():
    new_flags = ["maximize", "foreach", "fused", "differentiable", "capturable", "master_weights"]
    for kwargs, desc in sgd_inputs():  # (foreach / fused are not kept in FusedSGD's groups)
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(4, 2, 1, stride=2), nn.BatchNorm2d(2, eps=1e-05, momentum=0.1))
        x = torch.rand(1, 4, 16, 16)
        opt = FusedSGD(model.parameters(), **fresh(kwargs))

        def fwd_bwd(opt=opt, model=model, x=x):
            opt.zero_grad()
            model(x).sum().backward()

        for _ in range(3):
            fwd_bwd()
            opt.step()
        old = copy.deepcopy(opt.state_dict())
        for group in old["param_groups"]:
            for flag in new_flags:
                group.pop(flag, None)
        opt.load_state_dict(old)
        assert opt.param_groups[0]["maximize"] == kwargs.get("maximize", False), desc
        fwd_bwd()
        opt.step()


def test_deepcopy_and_pickle_keep_everything():
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    for p in params:
        p.grad = torch.rand_like(p)
    for kwargs, desc in all_inputs():
        opt = FusedSGD(params, **fresh(kwargs))
        for _ in range(3):
            opt.step()

        def public(obj):
            return {k for k in obj.__dict__ if not k.startswith("_")}

        assert public(opt) == public(copy.deepcopy(opt)), desc
        clone = pickle.loads(pickle.dumps(opt))
        assert clone.param_groups[0]["momentum"] == opt.param_groups[0]["momentum"]


def test_matches_torch_forloop_with_empty_param_and_skipped_grads():
    """torch's _test_derived_optimizers (foreach vs for-loop), FusedSGD vs torch.optim.SGD: a model plus a
    0-dim parameter, 7 steps, no grads at step 3 (a no-op step); params and state bit-identical."""
    for kwargs, desc in sgd_inputs():
        runs = []
        for cls, extra in ((torch.optim.SGD, {"foreach": False}), (FusedSGD, {})):
            x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64).reshape(3, 2)
            torch.manual_seed(1)
            model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1), nn.Sigmoid()).double()
            empty = torch.rand((), dtype=torch.float64, requires_grad=True)
            empty.grad = torch.rand_like(empty)
            params = list(model.parameters()) + [empty]
            opt = cls(params, **fresh(kwargs), **extra)
            for i in range(7):
                opt.zero_grad()
                if i != 3:
                    model(x).sum().backward()
                opt.step()
            runs.append((params, opt))
        (ref, ref_opt), (ours, opt) = runs
        for a, b in zip(ref, ours, strict=True):
            assert torch.equal(a, b), desc
            for key, value in ref_opt.state[a].items():
                assert torch.equal(value, opt.state[b][key]), (desc, key)


def test_mixed_dtypes_in_one_group():
    """torch's test_mixed_device_dtype on one CPU: float64/32/16/bf16 parameters in one group; 5x the
    single-op tolerance of each dtype, as torch allows (FusedSGD rounds low precision once, torch twice)."""
    dtypes = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    base = [torch.rand(2, 3, dtype=dt, requires_grad=True) for dt in dtypes]
    for p in base:
        p.grad = torch.rand_like(p)
    for kwargs, desc in sgd_inputs():
        runs = []
        for cls in (torch.optim.SGD, FusedSGD):
            params = [p.detach().clone().requires_grad_() for p in base]
            for p, b in zip(params, base, strict=True):
                p.grad = b.grad.clone()
            opt = cls(params, **fresh(kwargs))
            for _ in range(7):
                opt.step()
            runs.append((params, opt))
        for a, b in zip(runs[0][0], runs[1][0], strict=True):
            rtol, atol = torch.testing._comparison.get_tolerances(a.dtype, rtol=None, atol=None)
            torch.testing.assert_close(a, b, rtol=5 * rtol, atol=5 * atol, msg=desc)


def test_tensor_lr_equals_float_lr():
    for momentum in (0.0, 0.9):
        a = [torch.randn(7, requires_grad=True), torch.randn(3, 4, requires_grad=True)]
        b = [p.detach().clone().requires_grad_() for p in a]
        opt_a = FusedSGD(a, lr=torch.tensor(0.01), momentum=momentum)
        opt_b = FusedSGD(b, lr=0.01, momentum=momentum)
        for _ in range(4):
            for p, q in zip(a, b, strict=True):
                p.grad = torch.randn_like(p)
                q.grad = p.grad.clone()
            opt_a.step()
            opt_b.step()
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_hooks():
    p = Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    opt = FusedSGD([p], lr=0.1)
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: sd.update(extra=1))  # returns None: sd kept
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    opt.step()
    sd = opt.state_dict()
    assert sd["extra"] == 1
    opt.load_state_dict(sd)
    assert calls == ["pre", "post", "sd_pre", "load_pre", "load_post"]


def test_implementation_flags_are_silent_no_ops():
    p = Parameter(torch.randn(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = FusedSGD([p], lr=0.1, foreach=False, fused=True)
        p.grad = torch.randn(4)
        opt.step()
