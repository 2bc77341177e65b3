import math

import pytest
import torch
from torch import nn

from trainers.clip import clip_grad_norm


def _params(*grads):
    params = []
    for g in grads:
        p = nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g, dtype=torch.float32)
        params.append(p)
    return params


@pytest.mark.unit
def test_clips_to_the_threshold_and_returns_the_norm_before():
    a, b = _params([3.0, 4.0], [12.0])  # global norm sqrt(9 + 16 + 144) = 13
    norm = clip_grad_norm([a, b], max_norm=2.0)
    assert isinstance(norm, torch.Tensor) and norm.shape == () and norm.dtype == torch.float32  # read only when logged
    assert float(norm) == pytest.approx(13.0)
    assert torch.allclose(a.grad, torch.tensor([6.0, 8.0]) / 13)
    assert torch.allclose(b.grad, torch.tensor([24.0]) / 13)
    after = math.sqrt(a.grad.square().sum() + b.grad.square().sum())
    assert after == pytest.approx(2.0)


@pytest.mark.unit
def test_default_threshold_is_two():
    (a,) = _params([0.0, 4.0])
    assert float(clip_grad_norm([a])) == pytest.approx(4.0)
    assert torch.allclose(a.grad, torch.tensor([0.0, 2.0]))


@pytest.mark.unit
def test_below_the_threshold_nothing_changes():
    a, b = _params([0.6], [0.8])
    assert float(clip_grad_norm([a, b], max_norm=2.0)) == pytest.approx(1.0)
    assert a.grad.item() == pytest.approx(0.6) and b.grad.item() == pytest.approx(0.8)


@pytest.mark.unit
def test_parameters_without_grad_are_ignored():
    (a,) = _params([3.0, 4.0])
    b = nn.Parameter(torch.ones(2))
    assert float(clip_grad_norm([a, b], max_norm=1.0)) == pytest.approx(5.0)
    assert b.grad is None
    assert float(clip_grad_norm([b])) == 0.0


@pytest.mark.unit
def test_non_finite_norm_leaves_gradients_for_the_caller():
    a, b = _params([float("inf"), 1.0], [1.0])
    assert math.isinf(float(clip_grad_norm([a, b])))
    assert b.grad.item() == 1.0


@pytest.mark.unit
def test_agrees_with_torch_on_a_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model(torch.randn(4, 8)).square().sum().mul(100).backward()
    twin = [p.grad.clone() for p in model.parameters()]
    twin_params = [nn.Parameter(torch.zeros_like(g)) for g in twin]
    for p, g in zip(twin_params, twin):
        p.grad = g
    ours = float(clip_grad_norm(model.parameters(), max_norm=2.0))
    theirs = torch.nn.utils.clip_grad_norm_(twin_params, max_norm=2.0)
    assert ours == pytest.approx(theirs.item(), rel=1e-6)
    assert ours > 2.0
    for p, q in zip(model.parameters(), twin_params):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=0)


@pytest.mark.unit
def test_bfloat16_gradients_are_summed_in_float32():
    p = nn.Parameter(torch.zeros(4096, dtype=torch.bfloat16))
    p.grad = torch.full((4096,), 0.01, dtype=torch.bfloat16)
    expected = math.sqrt(4096) * float(torch.tensor(0.01, dtype=torch.bfloat16))
    assert float(clip_grad_norm([p], max_norm=100.0)) == pytest.approx(expected, rel=1e-6)
