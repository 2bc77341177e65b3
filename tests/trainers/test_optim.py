import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainers.optim import RMSpropTF, param_groups_weight_decay


def _tf_rmsprop_reference(p0, grads, lrs, *, alpha, momentum, eps, weight_decay):
    """TF1 RMSPropOptimizer (centered=False) step by step in float64 NumPy; returns p, ms, mom per step."""
    p = np.array(p0, dtype=np.float64)
    ms = np.ones_like(p)
    mom = np.zeros_like(p)
    trail = []
    for g, lr in zip(grads, lrs):
        g = np.asarray(g, dtype=np.float64) + weight_decay * p
        ms = alpha * ms + (1 - alpha) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        p = p - mom
        trail.append((p.copy(), ms.copy(), mom.copy()))
    return trail


@pytest.mark.unit
def test_first_step_by_hand():
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    p.grad = torch.tensor([0.5], dtype=torch.float64)
    opt = RMSpropTF([p], lr=0.1)
    opt.step()
    # ms = 0.9 * 1 + 0.1 * 0.25 = 0.925; buf = 0.1 * 0.5 / sqrt(0.925 + 1.0)
    assert opt.state[p]["square_avg"].item() == pytest.approx(0.925, abs=1e-15)
    assert opt.state[p]["momentum_buffer"].item() == pytest.approx(0.05 / math.sqrt(1.925), abs=1e-15)
    assert p.item() == pytest.approx(1.0 - 0.05 / math.sqrt(1.925), abs=1e-15)
    assert opt.state[p]["step"] == 1


@pytest.mark.unit
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_matches_numpy_over_steps_with_momentum_decay_and_changing_lr(foreach, momentum):
    rng = np.random.default_rng(0)
    p0 = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    steps = 6
    grads = [[rng.normal(scale=s, size=x.shape) for x in p0] for s in (0.1, 2.0, 0.5, 3.0, 0.01, 1.0)]
    lrs = [0.045, 0.045, 0.03, 0.03, 0.01, 0.2]
    params = [nn.Parameter(torch.tensor(x)) for x in p0]
    opt = RMSpropTF(params, lr=lrs[0], alpha=0.9, momentum=momentum, eps=1.0, weight_decay=0.01, foreach=foreach)
    expected = [
        _tf_rmsprop_reference(x, [g[i] for g in grads], lrs, alpha=0.9, momentum=momentum, eps=1.0, weight_decay=0.01)
        for i, x in enumerate(p0)
    ]
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[step]
        for i, p in enumerate(params):
            p.grad = torch.tensor(grads[step][i])
        opt.step()
        for i, p in enumerate(params):
            want_p, want_ms, want_mom = expected[i][step]
            np.testing.assert_allclose(p.detach().numpy(), want_p, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(opt.state[p]["square_avg"].numpy(), want_ms, rtol=1e-12)
            if momentum:
                np.testing.assert_allclose(opt.state[p]["momentum_buffer"].numpy(), want_mom, rtol=1e-12, atol=1e-15)
            else:
                assert "momentum_buffer" not in opt.state[p]


@pytest.mark.unit
def test_differs_from_torch_rmsprop():
    # Same nominal hyper-parameters, different algorithm: eps placement, ms init and lr placement.
    a = nn.Parameter(torch.ones(3))
    b = nn.Parameter(torch.ones(3))
    ours = RMSpropTF([a], lr=0.1)
    theirs = torch.optim.RMSprop([b], lr=0.1, alpha=0.9, momentum=0.9, eps=1.0)
    for opt, p in ((ours, a), (theirs, b)):
        p.grad = torch.full((3,), 0.5)
        opt.step()
    assert not torch.allclose(a, b)


@pytest.mark.unit
def test_parameters_without_grad_are_skipped():
    a = nn.Parameter(torch.ones(2))
    b = nn.Parameter(torch.ones(2))
    a.grad = torch.ones(2)
    opt = RMSpropTF([a, b], lr=0.1)
    opt.step()
    assert torch.equal(b, torch.ones(2))
    assert b not in opt.state


@pytest.mark.unit
def test_state_dict_round_trips():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    twin = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    x = torch.randn(8, 4)

    def train(m, opt, n):
        for _ in range(n):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()

    opt = RMSpropTF(param_groups_weight_decay(model, 4e-5), lr=0.05)
    train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    twin.load_state_dict(saved["model"])
    twin_opt = RMSpropTF(param_groups_weight_decay(twin, 0.0), lr=1.0)
    twin_opt.load_state_dict(saved["opt"])
    assert twin_opt.param_groups[0]["weight_decay"] == 4e-5
    assert twin_opt.param_groups[0]["lr"] == 0.05

    train(model, opt, 2)
    train(twin, twin_opt, 2)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(opt.state[a]["square_avg"], twin_opt.state[b]["square_avg"])
        assert opt.state[a]["step"] == twin_opt.state[b]["step"] == 5


@pytest.mark.unit
def test_weight_decay_groups_leave_out_batchnorm_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups_weight_decay(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 3, 3, 3), (2, 4)]
    assert [tuple(p.shape) for p in no_decay["params"]] == [(4,), (4,), (2,)]


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs", [dict(lr=-1.0), dict(lr=0.1, alpha=1.0), dict(lr=0.1, momentum=1.0), dict(lr=0.1, eps=-1.0)]
)
def test_rejects_invalid_hyper_parameters(kwargs):
    with pytest.raises(ValueError):
        RMSpropTF([nn.Parameter(torch.ones(1))], **kwargs)


def _twin_steps(foreach, momentum, weight_decay, masks, grads):
    """Parameters and state after stepping with `masks` (None: unmasked) over `grads`."""
    params = [nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float32).reshape(2, 3)), nn.Parameter(torch.ones(4))]
    opt = RMSpropTF(params, lr=0.05, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
    for mask, step_grads in zip(masks, grads):
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step() if mask is None else opt.step(finite=torch.tensor(mask))
    return [p.detach().clone() for p in params], [{k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()} for p in params]


@pytest.mark.unit
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_a_finite_mask_gives_the_plain_update_and_a_false_one_skips_it_on_the_device(foreach, momentum):
    g = torch.Generator().manual_seed(0)
    good = [[torch.randn(2, 3, generator=g), torch.randn(4, generator=g)] for _ in range(3)]
    bad = [torch.full((2, 3), float("inf")), torch.tensor([float("nan"), 1.0, -1.0, 2.0])]
    plain_p, plain_s = _twin_steps(foreach, momentum, 4e-5, [None, None, None], good)
    masked_p, masked_s = _twin_steps(foreach, momentum, 4e-5, [True, True, True], good)
    for a, b in zip(plain_p, masked_p):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A skipped step between two good ones: the weights and state as if it never happened.
    skipped_p, skipped_s = _twin_steps(foreach, momentum, 4e-5, [True, False, True], [good[0], bad, good[1]])
    reference_p, reference_s = _twin_steps(foreach, momentum, 4e-5, [None, None], [good[0], good[1]])
    for a, b in zip(skipped_p, reference_p):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(skipped_s, reference_s):
        torch.testing.assert_close(a["square_avg"], b["square_avg"], rtol=0, atol=0)
        if momentum:
            torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=0, atol=0)
        assert a["step"] == b["step"] + 1  # calls, the skipped one included
