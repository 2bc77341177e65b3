import math

import numpy as np
import pytest
import torch

from trainers.inception_v3 import InceptionOutputs
from trainers.loss import inception_loss


def _smoothed_ce(logits, target, eps):
    """Mean over the batch of -sum_k q_k log softmax(z)_k, q = (1 - eps) one_hot + eps / K, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    k = z.shape[1]
    q = np.full_like(z, eps / k)
    q[np.arange(len(target)), target] += 1 - eps
    return float(-(q * log_p).sum(1).mean())


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g), torch.tensor([0, 4, 2, 2, 1, 3])


@pytest.mark.unit
def test_uniform_logits_give_log_k_whatever_the_smoothing():
    logits = torch.zeros(3, 10)
    target = torch.tensor([1, 2, 3])
    assert inception_loss(logits, target).item() == pytest.approx(math.log(10))
    out = InceptionOutputs(logits, torch.zeros(3, 10))
    assert inception_loss(out, target).item() == pytest.approx(1.4 * math.log(10))


@pytest.mark.unit
def test_main_plus_weighted_aux_against_direct_computation(batch):
    logits, aux, target = batch
    want = _smoothed_ce(logits, target, 0.1) + 0.4 * _smoothed_ce(aux, target, 0.1)
    got = inception_loss(InceptionOutputs(logits, aux), target)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert inception_loss((logits, aux), target).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.unit
def test_plain_tensor_and_missing_aux_use_the_main_term_only(batch):
    logits, _, target = batch
    want = _smoothed_ce(logits, target, 0.1)
    assert inception_loss(logits, target).item() == pytest.approx(want, rel=1e-6)
    assert inception_loss(InceptionOutputs(logits, None), target).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.unit
def test_smoothing_and_weight_are_parameters(batch):
    logits, aux, target = batch
    want = _smoothed_ce(logits, target, 0.0) + 1.0 * _smoothed_ce(aux, target, 0.0)
    got = inception_loss((logits, aux), target, label_smoothing=0.0, aux_weight=1.0)
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert inception_loss((logits, aux), target, aux_weight=0.0).item() == pytest.approx(
        _smoothed_ce(logits, target, 0.1), rel=1e-6
    )


@pytest.mark.unit
def test_bfloat16_logits_give_a_float32_loss_and_gradients_flow(batch):
    logits, aux, target = batch
    logits = logits.bfloat16().requires_grad_()
    aux = aux.bfloat16().requires_grad_()
    loss = inception_loss(InceptionOutputs(logits, aux), target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16 and aux.grad.abs().sum() > 0
