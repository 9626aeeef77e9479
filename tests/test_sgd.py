"""FusedSGD and pyopt::fused_sgd_ against torch.optim.SGD(foreach=False) on every backend and CPU ISA."""

import copy
import itertools

import pytest
import torch
from torch import nn

import pyopt
from pyopt.nn import set_param_mask
from pyopt.optim import FusedSGD
from tests.conftest import backend_params, isa_params
from tests.tolerances import SGD_TRAJECTORY, tol

OP = torch.ops.pyopt.fused_sgd_.default
BACKENDS = backend_params("fused_sgd_")  # (device, backend): CUDA ones where a GPU exists
EXACT_BACKENDS = ("reference", "cpu")  # same fma/rounding sequence as ATen: bit-identical
HOST_BACKENDS = [b for b in EXACT_BACKENDS if b in pyopt.available_backends("cpu")]
requires_cpp = pytest.mark.skipif("cpu" not in HOST_BACKENDS, reason="C++ CPU kernels not built")


@pytest.fixture
def on_device(device):
    """Factory functions (randn, nn.Linear, ...) create their tensors on the test's device."""
    with torch.device(device):
        yield device


def valid(momentum, dampening, nesterov):
    return not nesterov or (momentum > 0 and dampening == 0)


GRID = [
    dict(momentum=m, dampening=d, nesterov=n, weight_decay=wd, maximize=mx)
    for m, d, n, wd, mx in itertools.product(
        (0.0, 0.9), (0.0, 0.1), (False, True), (0.0, 1e-2), (False, True)
    )
    if valid(m, d, n)
]
# The Triton interpreter is slow: a few corners of the grid, fewer steps.
TRITON_GRID = [GRID[i] for i in (1, len(GRID) // 2, len(GRID) - 1)]


def make_params(dtype, requires_grad=True):
    """Odd sizes, a non-contiguous (transposed) parameter and an empty one."""
    shapes = [(1,), (7,), (1003,), (33, 65), (0, 5)]
    ps = [torch.randn(s, dtype=dtype) for s in shapes] + [torch.randn(17, 9, dtype=dtype).t()]
    return [p.requires_grad_(requires_grad) for p in ps]


def clone_params(ps):
    return [p.detach().clone().requires_grad_(True) for p in ps]


def set_grads(groups, step, skip=()):
    """The same fresh random grads on every list of `groups`; params in `skip` get none."""
    for i, p in enumerate(groups[0]):
        g = None if i in skip else torch.randn_like(p)
        for ps in groups:
            ps[i].grad = None if g is None else g.clone()


def run_both(cfg, dtype, steps, backend, lr=0.1, skip_at=lambda step: ()):
    ours, ref = make_params(dtype), None
    ref = clone_params(ours)
    opt = FusedSGD(ours, lr=lr, **cfg)
    opt_ref = torch.optim.SGD(ref, lr=lr, foreach=False, **cfg)
    for step in range(steps):
        set_grads([ours, ref], step, skip_at(step))
        with pyopt.use_backend(backend):
            opt.step()
        opt_ref.step()
    return ours, ref, opt, opt_ref


def assert_params(ours, ref, backend, dtype, grads_depend_on_params=False):
    # Training a model feeds a ~1 ulp difference back through the grads: then the fp32 matmul tolerance.
    approx = tol(dtype) if grads_depend_on_params else SGD_TRAJECTORY[dtype]
    for a, b in zip(ours, ref, strict=True):
        if backend in EXACT_BACKENDS:
            assert torch.equal(a, b), (a - b).abs().max()
        else:
            torch.testing.assert_close(a, b, **approx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device,backend", BACKENDS)
def test_trajectory_grid(device, backend, dtype, on_device):
    grid, steps = (TRITON_GRID, 8) if backend == "triton" else (GRID, 50)
    for cfg in grid:
        ours, ref, _, _ = run_both(cfg, dtype, steps, backend)
        assert_params(ours, ref, backend, dtype)


@requires_cpp
@pytest.mark.parametrize("isa", isa_params())
def test_trajectory_every_isa(isa):
    cfg = dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-2, maximize=False)
    for dtype in (torch.float32, torch.float64):
        with pyopt.use_isa(isa):
            ours, ref, _, _ = run_both(cfg, dtype, 20, "cpu")
        assert_params(ours, ref, "cpu", dtype)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_late_grad_and_no_grad_params(device, backend, on_device):
    # params[1] gets its first grad at step 3 (its buffer starts then); params[2] never has one.
    cfg = dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2, maximize=False)
    ours, ref, opt, opt_ref = run_both(
        cfg, torch.float32, 6, backend, skip_at=lambda s: (2,) if s >= 3 else (1, 2)
    )
    assert_params(ours, ref, backend, torch.float32)
    assert ours[2] not in opt.state or "momentum_buffer" not in opt.state[ours[2]]


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_param_groups_and_lr_tensor(device, backend, on_device):
    ps, ref = make_params(torch.float32), None
    ref = clone_params(ps)
    kw = dict(momentum=0.9, nesterov=True, weight_decay=1e-2)
    opt = FusedSGD(ps[:3], lr=torch.tensor(0.05), **kw)
    opt.add_param_group({"params": ps[3:], "lr": 0.2, "momentum": 0.5, "nesterov": False})
    opt_ref = torch.optim.SGD(ref[:3], lr=torch.tensor(0.05), foreach=False, **kw)
    opt_ref.add_param_group({"params": ref[3:], "lr": 0.2, "momentum": 0.5, "nesterov": False})
    for step in range(5):
        opt.zero_grad()
        assert all(p.grad is None for p in ps)
        set_grads([ps, ref], step)
        with pyopt.use_backend(backend):
            opt.step()
        opt_ref.step()
    assert_params(ps, ref, backend, torch.float32)


def test_state_dict_both_ways():
    cfg = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2)
    for first, second in ((torch.optim.SGD, FusedSGD), (FusedSGD, torch.optim.SGD)):
        a = make_params(torch.float64)
        opt_a = first(a, **cfg)
        for step in range(3):
            set_grads([a], step)
            opt_a.step()
        b, c = clone_params(a), clone_params(a)  # b continues in `second`, c stays in `first`
        opt_b, opt_c = second(b, **cfg), first(c, **cfg)
        # load_state_dict keeps same-dtype tensors as they are: give each optimizer its own copy.
        opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
        opt_c.load_state_dict(copy.deepcopy(opt_a.state_dict()))
        for step in range(3):
            set_grads([b, c], step)
            opt_b.step()
            opt_c.step()
        for x, y in zip(b, c, strict=True):
            assert torch.equal(x, y)
        for x, y in zip(b, c, strict=True):
            if x.numel():
                assert torch.equal(opt_b.state[x]["momentum_buffer"], opt_c.state[y]["momentum_buffer"])


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_masks_keep_param_and_buffer_zero(device, backend, on_device):
    lin, lin_ref = nn.Linear(13, 7), nn.Linear(13, 7)
    lin_ref.load_state_dict(lin.state_dict())
    mask = torch.rand(7, 13) > 0.5
    set_param_mask(lin.weight, mask)
    cfg = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    opt, opt_ref = (
        FusedSGD(lin.parameters(), **cfg),
        torch.optim.SGD(lin_ref.parameters(), foreach=False, **cfg),
    )
    for _ in range(6):
        x = torch.randn(5, 13)
        for m in (lin, lin_ref):
            m.zero_grad()
            m(x).square().sum().backward()
        assert (lin.weight.grad[~mask] != 0).all()  # the grads would revive pruned weights
        with pyopt.use_backend(backend):
            opt.step()
        opt_ref.step()
        with torch.no_grad():  # what pruned training does today: re-apply the mask after the step
            lin_ref.weight.mul_(mask)
            opt_ref.state[lin_ref.weight]["momentum_buffer"].mul_(mask)
    buf = opt.state[lin.weight]["momentum_buffer"]
    assert (lin.weight[~mask] == 0).all() and (buf[~mask] == 0).all()
    assert_params([lin.weight, lin.bias], [lin_ref.weight, lin_ref.bias], backend, torch.float32, True)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_grad_scaler_overflow_on_first_step(device, backend, on_device):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(11, 9), nn.ReLU(), nn.Linear(9, 3))
    model_ref = nn.Sequential(nn.Linear(11, 9), nn.ReLU(), nn.Linear(9, 3))
    model_ref.load_state_dict(model.state_dict())
    cfg = dict(lr=0.05, momentum=0.9, weight_decay=1e-2)
    opt, opt_ref = (
        FusedSGD(model.parameters(), **cfg),
        torch.optim.SGD(model_ref.parameters(), foreach=False, **cfg),
    )
    scaler, scaler_ref = (
        torch.amp.GradScaler(device, init_scale=2.0**12),
        torch.amp.GradScaler(device, init_scale=2.0**12),
    )
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(5):
        x = torch.randn(6, 11)
        for m, s, o in ((model, scaler, opt), (model_ref, scaler_ref, opt_ref)):
            o.zero_grad()
            s.scale(m(x).square().mean()).backward()
            if step == 0:
                m[0].weight.grad[0, 0] = float("inf")  # forced overflow
            if step == 3:
                s.unscale_(o)  # e.g. for gradient clipping: the kernel must not unscale again
            with pyopt.use_backend(backend):
                s.step(o)
            s.update()
        if step == 0:  # skipped: no parameter moved, no momentum buffer was created
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
            assert not any(opt.state[p] for p in model.parameters())
            assert scaler.get_scale() == 2.0**11
    assert_params(list(model.parameters()), list(model_ref.parameters()), backend, torch.float32, True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("device,backend", BACKENDS)
def test_low_precision_params_computed_in_float32(device, backend, dtype, on_device):
    ps = make_params(dtype)
    wide = [p.detach().float().requires_grad_(True) for p in ps]
    cfg = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    opt, opt_wide = FusedSGD(ps, **cfg), torch.optim.SGD(wide, foreach=False, **cfg)
    set_grads([ps], 0)
    for p, w in zip(ps, wide, strict=True):
        w.grad = p.grad.float()
    for _ in range(2):  # the first step (buffer = grad) and one with a stored buffer
        with pyopt.use_backend(backend):
            opt.step()
        opt_wide.step()
        for p, w in zip(ps, wide, strict=True):
            # One float32 step from the same inputs, rounded once: the only difference is that rounding.
            torch.testing.assert_close(p.float(), w.detach().to(dtype).float(), **tol(dtype))
            w.data.copy_(p.float())
            opt_wide.state[w]["momentum_buffer"].copy_(opt.state[p]["momentum_buffer"].float())


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_master_weights_follow_float32_training(device, backend, on_device):
    ps = make_params(torch.bfloat16)
    wide = [p.detach().float().requires_grad_(True) for p in ps]
    cfg = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2)
    opt = FusedSGD(ps, master_weights=True, **cfg)
    opt_wide = torch.optim.SGD(wide, foreach=False, **cfg)
    for step in range(10):
        set_grads([ps], step)
        for p, w in zip(ps, wide, strict=True):
            w.grad = p.grad.float()
        with pyopt.use_backend(backend):
            opt.step()
        opt_wide.step()
    for p, w in zip(ps, wide, strict=True):
        st = opt.state[p]
        assert st["master_param"].dtype == torch.float32 and st["momentum_buffer"].dtype == torch.float32
        torch.testing.assert_close(st["master_param"], w.detach(), **SGD_TRAJECTORY[torch.float32])
        if backend in EXACT_BACKENDS:
            assert torch.equal(p, st["master_param"].to(torch.bfloat16))
        else:  # the Triton interpreter truncates float32 -> bf16 instead of rounding to nearest
            torch.testing.assert_close(p.float(), st["master_param"], **tol(torch.bfloat16))
    # The float32 state survives a state_dict round trip.
    opt2 = FusedSGD(clone_params(ps), master_weights=True, **cfg)
    opt2.load_state_dict(opt.state_dict())
    assert all(st["master_param"].dtype == torch.float32 for st in opt2.state.values())


def test_bad_arguments():
    p = [torch.randn(3, requires_grad=True)]
    with pytest.raises(ValueError, match="Invalid learning rate"):
        FusedSGD(p, lr=-0.1)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero dampening"):
        FusedSGD(p, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        FusedSGD(p, nesterov=True)
    with pytest.raises(ValueError, match="Invalid momentum value"):
        FusedSGD(p, momentum=-1)
    with pytest.raises(ValueError, match="Invalid weight_decay value"):
        FusedSGD(p, weight_decay=-1)
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        FusedSGD(p, lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="master_weights"):
        p[0].grad = torch.randn(3)
        FusedSGD(p, master_weights=True).step()
    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    for backend in HOST_BACKENDS:
        with (
            pyopt.use_backend(backend),
            pytest.raises(RuntimeError, match="does not support sparse gradients"),
        ):
            FusedSGD(emb.parameters(), lr=0.1).step()
    x = torch.randn(4)
    for backend in HOST_BACKENDS:
        with pyopt.use_backend(backend), pytest.raises((ValueError, RuntimeError), match=r"grads\[0\]"):
            _plain_sgd_op([x], [torch.randn(5)])
        with pyopt.use_backend(backend), pytest.raises((ValueError, RuntimeError), match=r"masks\[0\]"):
            _plain_sgd_op([x], [torch.randn(4)], masks=[torch.ones(4)])
    with pytest.raises(ValueError, match="first_step"):
        _plain_sgd_op([x], [torch.randn(4)], momentum_buffers=[torch.randn(4)], momentum=0.9)


def _plain_sgd_op(params, grads, momentum_buffers=(), masks=(), momentum=0.0):
    """fused_sgd_ with lr 0.1, no master weights / first_step flags / AMP tensors (for argument checks)."""
    return OP(
        params, grads, list(momentum_buffers), [], list(masks), [], 0.1, 0.0, momentum, 0.0, False, False,
        None, None, None,
    )  # fmt: skip


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_opcheck(device, backend, on_device):
    def args(dtype, master):
        ps = [torch.randn(7, dtype=dtype), torch.randn(3, 5, dtype=dtype)]
        gs = [torch.randn_like(p) for p in ps]
        bdt = torch.float32 if master else dtype
        bufs = [torch.randn(p.shape, dtype=bdt) for p in ps]
        masters = [p.float() for p in ps] if master else []
        masks = [torch.rand(7) > 0.5, None]
        return (ps, gs, bufs, masters, masks, [True, False], 0.1, 1e-2, 0.9, 0.0, True, False,
                torch.tensor(0.05), torch.tensor(4.0), torch.tensor(0.0))  # fmt: skip

    with pyopt.use_backend(backend):
        torch.library.opcheck(OP, args(torch.float32, False))
        torch.library.opcheck(OP, args(torch.bfloat16, True))
        skipped = args(torch.float32, False)[:-1] + (torch.tensor(1.0),)
        before = [t.clone() for t in skipped[0] + skipped[2]]
        OP(*skipped)  # found_inf != 0: nothing is written
        assert all(torch.equal(a, b) for a, b in zip(before, skipped[0] + skipped[2], strict=True))


# ------------------------------------------------------------------ drop-in behaviour found by torch's tests
def test_duplicate_parameter_warns_and_steps_like_torch():
    """A parameter listed twice: torch warns at construction and applies its step once per occurrence
    (for-loop, in order; on its first step each occurrence starts its own buffer, the last one is kept).
    FusedSGD must do the same, deterministically (one fused call would race on the shared tensor)."""
    results = []
    for _ in range(3):
        torch.manual_seed(3)
        a, b = torch.randn(2**20 + 3, requires_grad=True), torch.randn(7, requires_grad=True)  # many chunks
        ra, rb = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        cfg = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2)
        with pytest.warns(UserWarning, match="duplicate parameters"):
            opt = FusedSGD([a, b, a], **cfg)
        with pytest.warns(UserWarning, match="duplicate parameters"):
            opt_ref = torch.optim.SGD([ra, rb, ra], foreach=False, **cfg)
        for step in range(4):
            set_grads([[a, b], [ra, rb]], step, skip=(1,) if step == 2 else ())
            opt.step()
            opt_ref.step()
            assert torch.equal(a, ra) and torch.equal(b, rb), step
            assert torch.equal(opt.state[a]["momentum_buffer"], opt_ref.state[ra]["momentum_buffer"])
        results.append(a.detach().clone())
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_grads_left_unscaled_after_scaler_step():
    """After scaler.step(opt), p.grad holds the unscaled gradient, as torch.optim.SGD leaves it."""
    lin = nn.Linear(5, 3)
    opt = FusedSGD(lin.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    x = torch.randn(4, 5)
    lin(x).sum().backward()
    want = [p.grad.clone() for p in lin.parameters()]
    opt.zero_grad()
    scaler.scale(lin(x).sum()).backward()
    scaler.step(opt)
    for p, g in zip(lin.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["clear", "del", "replace"])
def test_state_changes_are_honoured(how):
    """opt.state.clear() / del opt.state[p] / opt.state[p] = {}: the next step starts a fresh buffer, as
    torch does, and state_dict() holds what the optimizer really uses (no momentum cached elsewhere)."""
    p = torch.tensor([1.0], requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt, ref = FusedSGD([p], lr=0.1, momentum=0.9), torch.optim.SGD([q], lr=0.1, momentum=0.9)
    for step in range(4):
        for t in (p, q):
            t.grad = torch.tensor([float(step + 1)])
        opt.step()
        ref.step()
        if step == 1:
            for o, t in ((opt, p), (ref, q)):
                if how == "clear":
                    o.state.clear()
                elif how == "del":
                    del o.state[t]
                else:
                    o.state[t] = {}
    assert torch.equal(p, q)
    assert len(opt.state_dict()["state"]) == len(ref.state_dict()["state"]) == 1
    assert torch.equal(opt.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])


def test_master_weights_survive_loading_a_torch_state():
    ps = [torch.randn(9, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
    torch_opt = torch.optim.SGD([p.detach().clone().requires_grad_() for p in ps], lr=0.1, momentum=0.9)
    for p in torch_opt.param_groups[0]["params"]:
        p.grad = torch.randn_like(p)
    torch_opt.step()
    opt = FusedSGD(ps, lr=0.1, momentum=0.9, master_weights=True)
    opt.load_state_dict(torch_opt.state_dict())
    assert opt.param_groups[0]["master_weights"] is True
    for p in ps:
        assert opt.state[p]["momentum_buffer"].dtype == torch.float32
        p.grad = torch.randn_like(p)
    opt.step()
    for p in ps:
        assert opt.state[p]["master_param"].dtype == torch.float32
        assert torch.equal(p, opt.state[p]["master_param"].to(torch.bfloat16))


def test_implementation_keywords():
    p = [torch.randn(3, requires_grad=True)]
    for kw in ({"foreach": None}, {"foreach": True}, {"foreach": False}, {"fused": True}, {"fused": False},
               {"differentiable": False}, {"fused": None, "foreach": None, "differentiable": False}):  # fmt: skip
        opt = FusedSGD(p, lr=0.1, **kw)
        assert not {"foreach", "fused", "differentiable"} & set(opt.param_groups[0])
    with pytest.raises(RuntimeError, match="differentiable=True"):
        FusedSGD(p, lr=0.1, differentiable=True)
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        FusedSGD(p, lr=0.1, foreach=True, fused=True)


def test_no_state_entries_without_momentum():
    """As torch: plain SGD (no momentum, no master weights) keeps no per-parameter state."""
    ps = make_params(torch.float32)
    opt, ref = FusedSGD(ps, lr=0.1), torch.optim.SGD(clone_params(ps), lr=0.1)
    for step in range(2):
        set_grads([ps, ref.param_groups[0]["params"]], step)
        opt.step()
        ref.step()
    assert len(opt.state) == len(ref.state) == 0
    assert opt.state_dict()["state"] == ref.state_dict()["state"] == {}
