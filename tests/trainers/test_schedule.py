import pytest

from trainers.schedule import learning_rate, scaled_lr


@pytest.mark.unit
@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.045),
        (199, 0.045),  # epoch 1.99
        (200, 0.045 * 0.94),  # epoch 2.0: first decay
        (399, 0.045 * 0.94),
        (400, 0.045 * 0.94**2),
        (1050, 0.045 * 0.94**5),  # epoch 10.5
        (10_000, 0.045 * 0.94**50),  # epoch 100, the paper's last
    ],
)
def test_staircase_every_two_epochs(step, expected):
    assert learning_rate(step, steps_per_epoch=100, base_lr=0.045) == pytest.approx(expected, rel=1e-12)


@pytest.mark.unit
def test_fractional_epochs_with_uneven_steps_per_epoch():
    # 3 steps per epoch: step 5 is epoch 1.67, step 6 is epoch 2.0.
    assert learning_rate(5, steps_per_epoch=3, base_lr=1.0) == 1.0
    assert learning_rate(6, steps_per_epoch=3, base_lr=1.0) == pytest.approx(0.94)
    # decay every 0.5 epoch at 4 steps per epoch: step 7 is the 3rd half-epoch (index 3).
    assert learning_rate(7, steps_per_epoch=4, base_lr=1.0, decay_rate=0.5, decay_epochs=0.5) == 0.125


@pytest.mark.unit
@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.1), (4, 0.5), (8, 0.9), (9, 1.0), (10, 1.0), (19, 1.0), (20, 0.94)],
)
def test_linear_warmup(step, expected):
    assert learning_rate(step, steps_per_epoch=10, base_lr=1.0, warmup_epochs=1.0) == pytest.approx(expected)


@pytest.mark.unit
def test_warmup_longer_than_a_decay_period_multiplies_both():
    # 3 warm-up epochs of 10 steps; step 25 is epoch 2.5: factor 26/30 times one decay.
    assert learning_rate(25, steps_per_epoch=10, base_lr=1.0, warmup_epochs=3.0) == pytest.approx(26 / 30 * 0.94)


@pytest.mark.unit
def test_scaled_lr_is_linear_in_the_global_batch():
    assert scaled_lr(32) == 0.045
    assert scaled_lr(1600) == pytest.approx(2.25)  # the paper's 50 replicas x 32
    assert scaled_lr(256) == pytest.approx(0.36)
    assert scaled_lr(256, base_lr=0.01, base_batch=32) == pytest.approx(0.08)


@pytest.mark.unit
def test_the_large_batch_reference_rate_is_not_the_papers_scaled_linearly():
    # 0.165 per 256 at 1,024 images: 0.66; the paper's 0.045 per 32 at 1,024: 1.44 (REFERENCE.md).
    assert scaled_lr(1024, base_lr=0.165, base_batch=256) == pytest.approx(0.66)
    assert scaled_lr(1024) == pytest.approx(1.44)


@pytest.mark.unit
@pytest.mark.parametrize(
    "step, expected",
    [(0, 1.0), (9, 1.0), (10, 0.5), (20, 0.25), (29, 0.25), (30, 0.2), (40, 0.2), (1000, 0.2)],
)
def test_floor_stops_the_staircase(step, expected):
    # x0.5 every epoch of 10 steps, floor 0.2 of the base: 0.125 at epoch 3 is held at 0.2.
    assert learning_rate(step, steps_per_epoch=10, base_lr=1.0, decay_rate=0.5, decay_epochs=1.0, floor=0.2) == pytest.approx(expected)


@pytest.mark.unit
def test_warmup_ramps_the_floored_rate():
    # A decay every step (0.1 epoch of 10 steps): step 4 is 0.5 ** 4 = 0.0625, floored at 0.1, times 5 / 10.
    assert learning_rate(4, steps_per_epoch=10, base_lr=1.0, decay_rate=0.5, decay_epochs=0.1, warmup_epochs=1.0, floor=0.1) == pytest.approx(0.05)


@pytest.mark.unit
@pytest.mark.parametrize(
    "epoch, expected",
    [
        (0, 0.66),
        (3, 0.66 * 0.94),  # 0.6204
        (6, 0.66 * 0.94**2),  # 0.583176
        (444, 0.66 * 0.94**148),  # 0.94 ** 148 = 1.053e-4: still above the floor
        (447, 0.66 * 1e-4),  # 0.94 ** 149 = 0.990e-4: held at 1e-4 of the initial rate
        (600, 0.66 * 1e-4),
    ],
)
def test_large_batch_reference_schedule(epoch, expected):
    # 1,281,167 images, 8 workers x 128: (1,281,167 // 8) // 128 = 1,251 steps per epoch.
    step = epoch * 1251
    assert learning_rate(step, steps_per_epoch=1251, base_lr=0.66, decay_rate=0.94, decay_epochs=3.0, floor=1e-4) == pytest.approx(expected, rel=1e-12)
    if epoch:
        assert learning_rate(step - 1, steps_per_epoch=1251, base_lr=0.66, decay_rate=0.94, decay_epochs=3.0, floor=1e-4) >= expected


@pytest.mark.unit
def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        learning_rate(0, steps_per_epoch=0, base_lr=0.1)
    with pytest.raises(ValueError):
        learning_rate(-1, steps_per_epoch=10, base_lr=0.1)
    with pytest.raises(ValueError):
        scaled_lr(0)
    with pytest.raises(ValueError):
        learning_rate(0, steps_per_epoch=10, base_lr=0.1, floor=1.0)
    with pytest.raises(ValueError):
        learning_rate(0, steps_per_epoch=10, base_lr=0.1, floor=-0.1)
