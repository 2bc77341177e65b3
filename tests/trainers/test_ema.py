import io

import pytest
import torch
from torch import nn

from trainers.ema import ModelEma, ema_decay


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.bn = nn.BatchNorm1d(1)


@pytest.mark.unit
@pytest.mark.parametrize(
    "n, decay, expected",
    [(0, 0.9999, 0.1), (1, 0.9999, 2 / 11), (8, 0.9999, 0.5), (89_989, 0.9999, 89_990 / 89_999), (89_990, 0.9999, 0.9999),
     (10**7, 0.9999, 0.9999), (20, 0.5, 0.5)],
)
def test_tf_warmup_decay(n, decay, expected):
    assert ema_decay(n, decay) == pytest.approx(expected, rel=1e-15)


@pytest.mark.unit
def test_average_after_three_updates_by_hand():
    model = _Tiny()
    ema = ModelEma(model)
    for value in (1.0, 2.0, 3.0):
        model.w.data.fill_(value)
        ema.update(model)
    # d = 0.1: 0.9 * 1 = 0.9; d = 2/11: (2 * 0.9 + 9 * 2) / 11 = 1.8; d = 0.25: 0.45 + 2.25 = 2.7
    assert ema.module.w.item() == pytest.approx(2.7, rel=1e-6)
    assert ema.num_updates == 3


@pytest.mark.unit
def test_batchnorm_statistics_are_averaged_and_the_count_copied():
    model = _Tiny()
    ema = ModelEma(model, decay=0.9999)
    model.bn.running_mean.fill_(10.0)
    model.bn.running_var.fill_(3.0)
    model.bn.num_batches_tracked.fill_(7)
    ema.update(model)
    # first update, d = 0.1: 0.1 * 0 + 0.9 * 10; 0.1 * 1 + 0.9 * 3
    assert ema.module.bn.running_mean.item() == pytest.approx(9.0)
    assert ema.module.bn.running_var.item() == pytest.approx(2.8)
    assert ema.module.bn.num_batches_tracked.item() == 7


@pytest.mark.unit
def test_averaged_module_is_a_frozen_eval_copy():
    model = _Tiny().train()
    ema = ModelEma(model)
    assert not ema.module.training and model.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    model.w.data.fill_(5.0)
    assert ema.module.w.item() == 0.0


@pytest.mark.unit
def test_unwraps_data_parallel():
    model = _Tiny()
    ema = ModelEma(nn.DataParallel(model))
    model.w.data.fill_(1.0)
    ema.update(nn.DataParallel(model))
    assert ema.module.w.item() == pytest.approx(0.9)


@pytest.mark.unit
def test_state_dict_round_trips_with_the_update_count():
    model = _Tiny()
    ema = ModelEma(model, decay=0.99)
    for value in (1.0, 2.0, 3.0):
        model.w.data.fill_(value)
        ema.update(model)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    restored = ModelEma(_Tiny())
    restored.load_state_dict(torch.load(buffer))
    assert restored.num_updates == 3 and restored.decay == 0.99
    model.w.data.fill_(4.0)
    ema.update(model)
    restored.update(model)
    # fourth update, d = 4/13: 4/13 * 2.7 + 9/13 * 4
    assert restored.module.w.item() == ema.module.w.item() == pytest.approx((4 * 2.7 + 36) / 13, rel=1e-6)
