import io

import pytest
import torch
from torch import nn

from trainers.ema import ModelEma, ema_decay, horizon_steps, step_decay, warmup_updates


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
@pytest.mark.parametrize(
    "decay, global_batch, reference_batch, expected",
    [
        (0.995, 1024, 1024, 0.995),  # the large-batch reference at its own batch
        (0.995, 2048, 1024, 0.990025),  # 0.995 ** 2
        (0.999, 1024, 256, 0.996005996001),  # 0.999 ** 4 = 0.998001 ** 2
        (0.995, 256, 1024, 0.9987476),  # 0.995 ** 0.25 = exp(ln(0.995) / 4) = exp(-0.00125314)
        (0.99, 32, 0, 0.99),  # reference batch 0: already per step (configs/demo.yaml)
        (0.9999, 8192, 0, 0.9999),
    ],
)
def test_step_decay_scales_with_the_global_batch(decay, global_batch, reference_batch, expected):
    assert step_decay(decay, global_batch=global_batch, reference_batch=reference_batch) == pytest.approx(expected, rel=1e-7)


@pytest.mark.unit
@pytest.mark.parametrize("global_batch", [32, 256, 1000, 1024, 8192, 65536])
def test_horizon_in_images_does_not_depend_on_the_batch(global_batch):
    # 0.995 at 1,024: -1 / ln(0.995) = 199.4996 steps, 204,287.6 images, at any global batch.
    per_step = step_decay(0.995, global_batch=global_batch, reference_batch=1024)
    assert global_batch * horizon_steps(per_step) == pytest.approx(204_287.6, rel=1e-6)


@pytest.mark.unit
def test_horizon_steps_by_hand():
    assert horizon_steps(0.995) == pytest.approx(199.4996, rel=1e-6)  # about 1 / (1 - 0.995) = 200
    assert horizon_steps(0.9999) == pytest.approx(9999.5, rel=1e-6)
    assert horizon_steps(0.0) == 0.0


@pytest.mark.unit
@pytest.mark.parametrize("decay, n", [(0.995, 1790), (0.9999, 89_990), (0.99, 890), (0.1, 0), (0.0, 0)])
def test_warmup_updates_is_where_tf_warmup_reaches_the_decay(decay, n):
    # (10 * decay - 1) / (1 - decay): 8.95 / 0.005 = 1,790; 8.999 / 0.0001 = 89,990; 8.9 / 0.01 = 890.
    assert warmup_updates(decay) == n
    assert ema_decay(n, decay) == decay
    assert n == 0 or ema_decay(n - 1, decay) < decay


@pytest.mark.unit
def test_step_decay_and_horizon_reject_bad_arguments():
    with pytest.raises(ValueError):
        step_decay(0.9, global_batch=0, reference_batch=32)
    with pytest.raises(ValueError):
        step_decay(0.9, global_batch=32, reference_batch=-1)
    with pytest.raises(ValueError):
        horizon_steps(1.0)
    with pytest.raises(ValueError):
        warmup_updates(1.0)


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
