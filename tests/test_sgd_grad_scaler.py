"""torch's GradScaler tests, adapted to FusedSGD on CPU (test/test_torch.py and test_cuda.py:
`_run_scaling_case` runs a scaled model against an unscaled control, with an overflow forced at one
iteration, and compares parameters, optimizer state and grads; the facts carry over, the code is this
project's). FusedSGD takes the scale from GradScaler and unscales inside its kernel, then leaves the grads
unscaled as torch.optim.SGD does.
"""

import copy
import itertools
import pickle

import pytest
import torch
from torch import nn

from pyopt.optim import FusedSGD

# torch's _create_scaling_case: two copies of Linear(8,8)-Linear(8,8), lr 1.0, 4 batches of 8x8, MSE loss,
# an overflow forced at iteration 2; scale 128, growth 2 every iteration.
SKIP_ITER = 2


def scaling_case(seed=0, **opt_kwargs):
    torch.manual_seed(seed)
    control = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    scaling = copy.deepcopy(control)
    kwargs = {"lr": 1.0, **opt_kwargs}
    data = [(torch.randn(8, 8), torch.randn(8, 8)) for _ in range(4)]
    return (
        control,
        scaling,
        FusedSGD(control.parameters(), **kwargs),
        FusedSGD(scaling.parameters(), **kwargs),
        data,
    )


def run_scaling_case(run, unskipped, skipped, atol=1e-7, **opt_kwargs):
    for enabled in (True, False):
        control, scaling, opt_control, opt_scaling, data = scaling_case(**opt_kwargs)
        scaler = torch.amp.GradScaler(
            "cpu", init_scale=128.0, growth_factor=2.0, enabled=enabled, growth_interval=1
        )
        run(data, control, opt_control, scaler, False)
        scaler = run(data, scaling, opt_scaling, scaler, True) or scaler
        if enabled:
            expect = 128.0 * scaler.get_growth_factor() ** unskipped * scaler.get_backoff_factor() ** skipped
            assert scaler.get_scale() == expect
        else:
            assert scaler.get_scale() == 1.0
        for c, s in zip(control.parameters(), scaling.parameters(), strict=True):
            # the grads are compared too: FusedSGD leaves them unscaled, as torch.optim.SGD does
            torch.testing.assert_close(c.grad, s.grad, atol=atol, rtol=1e-5)
            for key, value in opt_control.state[c].items():
                torch.testing.assert_close(value, opt_scaling.state[s][key], atol=atol, rtol=1e-5)
            torch.testing.assert_close(c, s, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("opt_kwargs", [{}, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}])
@pytest.mark.parametrize("try_pickle", [False, True])
def test_grad_scaling_autocast(opt_kwargs, try_pickle):
    loss_fn = nn.MSELoss()

    def run(data, model, opt, scaler, scaling):
        for i, (x, target) in enumerate(data):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=scaling):
                loss = loss_fn(model(x), target)
            if scaling:
                scaler.scale(loss).backward()
                if i == SKIP_ITER and scaler.is_enabled():
                    with torch.no_grad():
                        model[1].weight.grad.fill_(float("inf"))
                scaler.step(opt)
                scaler.update()
                if try_pickle:
                    scaler = pickle.loads(pickle.dumps(scaler))
            else:
                loss.backward()
                if not scaler.is_enabled() or i != SKIP_ITER:
                    opt.step()
        return scaler

    # bf16 autocast against float32: bf16 has 8 bits of mantissa (torch uses 1e-3 for fp16 autocast)
    run_scaling_case(run, unskipped=3, skipped=1, atol=3e-2, **opt_kwargs)


def test_grad_scaling_clipping():
    loss_fn, max_norm = nn.MSELoss(), 0.2

    def run(data, model, opt, scaler, scaling):
        for i, (x, target) in enumerate(data):
            opt.zero_grad()
            loss = loss_fn(model(x), target)
            if scaling:
                scaler.scale(loss).backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_norm * scaler.get_scale())
                if i == SKIP_ITER and scaler.is_enabled():
                    model[1].weight.grad.data.fill_(float("inf"))
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                if not scaler.is_enabled() or i != SKIP_ITER:
                    opt.step()

    run_scaling_case(run, unskipped=3, skipped=1, atol=1e-5)


def test_grad_scaling_clipping_separate_unscale():
    loss_fn, max_norm = nn.MSELoss(), 0.2

    def run(data, model, opt, scaler, scaling):
        for i, (x, target) in enumerate(data):
            opt.zero_grad()
            loss = loss_fn(model(x), target)
            if scaling:
                scaler.scale(loss).backward()
                if i == SKIP_ITER and scaler.is_enabled():
                    model[1].weight.grad.data.fill_(float("inf"))
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), max_norm, error_if_nonfinite=False)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                if not scaler.is_enabled() or i != SKIP_ITER:
                    opt.step()

    run_scaling_case(run, unskipped=3, skipped=1)


def test_grad_scaling_penalty():
    loss_fn = nn.MSELoss()

    def run(data, model, opt, scaler, scaling):
        for i, (x, target) in enumerate(data):
            opt.zero_grad()
            loss = loss_fn(model(x), target)
            if scaling:
                grads = torch.autograd.grad(scaler.scale(loss), model.parameters(), create_graph=True)
                grads = [g * (1.0 / scaler.get_scale()) for g in grads]
            else:
                grads = torch.autograd.grad(loss, model.parameters(), create_graph=True)
            loss = loss + sum(g.pow(2).sum() for g in grads).sqrt()
            if scaling:
                scaler.scale(loss).backward()
                if i == SKIP_ITER and scaler.is_enabled():
                    model[1].weight.grad.data.fill_(float("inf"))
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                if not scaler.is_enabled() or i != SKIP_ITER:
                    opt.step()

    run_scaling_case(run, unskipped=3, skipped=1)


def test_grad_scaling_accumulation():
    loss_fn, accumulate = nn.MSELoss(), 2

    def run(data, model, opt, scaler, scaling):
        for i, (x, target) in enumerate(data):
            loss = loss_fn(model(x), target) / accumulate
            (scaler.scale(loss) if scaling else loss).backward()
            if (i + 1) % accumulate == 0:
                if scaling:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad()

    run_scaling_case(run, unskipped=2, skipped=0)


def test_grad_scaling_multiple():
    """Two models, two optimizers, one scaler; the first optimizer unscaled separately; the overflow is
    only in the second model, so only the second optimizer skips its step."""
    loss_fn = nn.MSELoss()
    for enabled in (True, False):
        c0, s0, oc0, os0, data = scaling_case(seed=0, momentum=0.9)
        c1, s1, oc1, os1, _ = scaling_case(seed=1, momentum=0.9)
        scaler = torch.amp.GradScaler(
            "cpu", init_scale=128.0, growth_factor=2.0, enabled=enabled, growth_interval=1
        )

        def run(m0, m1, o0, o1, scaling, scaler=scaler, data=data):
            for i, (x, target) in enumerate(data):
                o0.zero_grad()
                o1.zero_grad()
                y0, y1 = m0(x), m1(x)
                loss0 = loss_fn(0.3 * y0 + 0.7 * y1, target)
                loss1 = loss_fn(0.6 * y0 - 0.4 * y1, target)
                if scaling:
                    scaler.scale(loss0).backward(retain_graph=True)
                    scaler.scale(loss1).backward()
                    if i == SKIP_ITER and scaler.is_enabled():
                        m1[1].weight.grad.data.fill_(float("inf"))
                    scaler.unscale_(o0)
                    scaler.step(o0)
                    scaler.step(o1)
                    scaler.update()
                else:
                    loss0.backward(retain_graph=True)
                    loss1.backward()
                    o0.step()
                    if not scaler.is_enabled() or i != SKIP_ITER:
                        o1.step()

        run(c0, c1, oc0, oc1, False)
        run(s0, s1, os0, os1, True)
        expect = 128.0 * 2.0**3 * 0.5 if enabled else 1.0
        assert scaler.get_scale() == expect
        for c, s in zip(
            itertools.chain(c0.parameters(), c1.parameters()),
            itertools.chain(s0.parameters(), s1.parameters()),
            strict=True,
        ):
            torch.testing.assert_close(c, s, rtol=1e-5, atol=1e-7)


def test_grad_scaler_leaves_same_grads_as_torch_sgd():
    """FusedSGD vs torch.optim.SGD under the same GradScaler steps: params, buffers and p.grad agree
    bit for bit (both unscale with float32(1 / scale))."""
    cfg = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    for separate_unscale in (False, True):
        torch.manual_seed(0)
        ours = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
        ref = copy.deepcopy(ours)
        opt, opt_ref = (
            FusedSGD(ours.parameters(), **cfg),
            torch.optim.SGD(ref.parameters(), foreach=False, **cfg),
        )
        sc, sc_ref = (torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2))
        for step in range(4):
            x = torch.randn(4, 6)
            for m, o, s in ((ours, opt, sc), (ref, opt_ref, sc_ref)):
                o.zero_grad()
                s.scale(m(x).square().mean()).backward()
                if step == 1:
                    m[0].bias.grad[0] = float("inf")
                if separate_unscale:
                    s.unscale_(o)
                s.step(o)
                s.update()
            for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
                assert torch.equal(a, b)
                if step != 1:  # on the overflow step both hold inf / nan grads
                    assert torch.equal(a.grad, b.grad), "p.grad must be left unscaled"
