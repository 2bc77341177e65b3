"""The progressive-resizing schedule of pipelines.resolution at chosen epochs."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import UserError
from pipelines.resolution import resolution_at, validate_schedule

pytestmark = pytest.mark.unit

RAMP = [(0, 160), (10, 299)]


@pytest.mark.parametrize(
    "epoch,schedule,expected",
    [
        # A fixed int, whatever the epoch.
        (0, 299, 299),
        (57.5, 299, 299),
        # 160 -> 299 over 10 epochs: 13.9 px/epoch, floored to multiples of 32 in between,
        # the written points exact.
        (0, RAMP, 160),
        (1, RAMP, 160),
        (2.3, RAMP, 160),
        (2.4, RAMP, 192),
        (3, RAMP, 192),
        (5, RAMP, 224),
        (7, RAMP, 256),
        (9.99, RAMP, 288),
        (10, RAMP, 299),
        (11, RAMP, 299),
        (1000, RAMP, 299),
        # Mapping form, three points, fractional epochs.
        (0, {0: 128, 4: 256, 8: 256}, 128),
        (1, {0: 128, 4: 256, 8: 256}, 160),
        (2, {0: 128, 4: 256, 8: 256}, 192),
        (3.99, {0: 128, 4: 256, 8: 256}, 224),
        (4, {0: 128, 4: 256, 8: 256}, 256),
        (6, {0: 128, 4: 256, 8: 256}, 256),
        # Before the first point: the first resolution.
        (0, [(2, 192), (4, 256)], 192),
        (1.5, [(2, 192), (4, 256)], 192),
        (3, [(2, 192), (4, 256)], 224),
        # One point: constant.
        (0, [(5, 224)], 224),
        (9, [(5, 224)], 224),
        # Decreasing ramps floor too.
        (1, [(0, 256), (2, 128)], 192),
        (1.5, [(0, 256), (2, 128)], 160),
        # Flooring at exact multiples is not lost to float error.
        (0.3, [(0, 160), (0.6, 224)], 192),
        (0.1, [(0.0, 128), (0.3, 224)], 160),
    ],
)
def test_resolution_at(epoch, schedule, expected):
    assert resolution_at(epoch, schedule) == expected


def test_ffcv_style_ramp_160_to_192():
    # FFCV's ImageNet schedule shape: 160 until epoch 2, ramp to 192 at epoch 13.
    schedule = [(2, 160), (13, 192)]
    got = [resolution_at(e, schedule) for e in range(16)]
    assert got == [160] * 13 + [192] * 3


@pytest.mark.parametrize(
    "schedule",
    [RAMP, [(0, 128), (3, 224), (5, 224), (9, 320)], {0: 96, 1: 299}, [(1.5, 64), (2.25, 512)]],
)
def test_between_points_multiples_of_32_and_monotone(schedule):
    points = validate_schedule(schedule)
    written = {res for _, res in points}
    values = [resolution_at(e, schedule) for e in np.arange(0, 12, 0.05)]
    assert values == sorted(values)
    for v in values:
        assert v in written or v % 32 == 0
    assert min(values) >= min(written) - 31 and max(values) == max(written)


@pytest.mark.parametrize(
    "epoch,kwargs,expected",
    [
        (1, {"minimum": 200}, 200),
        (0, {"minimum": 200}, 200),
        (20, {"minimum": 200}, 299),
        (1, {"minimum": 75}, 160),
        (2.4, {"multiple": 8}, 192),
        (2.4, {"multiple": 1}, 193),
        (5, {"multiple": 64}, 192),
    ],
)
def test_minimum_and_multiple(epoch, kwargs, expected):
    assert resolution_at(epoch, RAMP, **kwargs) == expected


def test_fixed_int_below_minimum_is_clamped():
    assert resolution_at(3, 64, minimum=75) == 75


@pytest.mark.parametrize(
    "schedule,message",
    [
        (0, "resolution must be positive"),
        (-299, "resolution must be positive"),
        ([], "no \\(epoch, resolution\\) points"),
        ({}, "no \\(epoch, resolution\\) points"),
        ([(0, 160), (0, 192)], "epochs must increase, got 0 after 0.0"),
        ([(5, 160), (2, 192)], "epochs must increase, got 2 after 5.0"),
        ({3: 160, 1: 192}, "epochs must increase"),
        ([(0, 0)], "resolution must be a positive integer"),
        ([(0, 160), (4, -1)], "resolution must be a positive integer"),
        ([(0, 160.5)], "resolution must be a positive integer"),
        ([(0, "160")], "resolution must be a positive integer"),
        ([(-1, 160)], "epoch must be a number >= 0"),
        ([("0", 160)], "epoch must be a number >= 0"),
        ([(float("nan"), 160)], "epoch must be a number >= 0"),
        ([(0, 160, 1)], "expected an \\(epoch, resolution\\) pair"),
        ([160, 192], "expected an \\(epoch, resolution\\) pair"),
        ("299", "must be an int or"),
        (299.0, "must be an int or"),
        (True, "must be an int or"),
        (None, "must be an int or"),
    ],
)
def test_bad_schedules_raise_one_clear_line(schedule, message):
    with pytest.raises(UserError, match=message) as info:
        resolution_at(0, schedule)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("epoch", [-1, float("inf"), "3", None])
def test_bad_epoch(epoch):
    with pytest.raises(UserError, match="epoch must be a number >= 0"):
        resolution_at(epoch, RAMP)


@pytest.mark.parametrize("kwargs", [{"multiple": 0}, {"minimum": 0}, {"multiple": 3.5}])
def test_bad_multiple_or_minimum(kwargs):
    with pytest.raises(UserError, match="multiple and minimum"):
        resolution_at(0, RAMP, **kwargs)


def test_validate_schedule_normalises_forms():
    assert validate_schedule(299) == ((0.0, 299),)
    assert validate_schedule({0: 160, 10: 299}) == ((0.0, 160), (10.0, 299))
    assert validate_schedule([[0, 160], (10, np.int64(299))]) == ((0.0, 160), (10.0, 299))
    assert all(type(r) is int for _, r in validate_schedule([(0, np.int32(160))]))
