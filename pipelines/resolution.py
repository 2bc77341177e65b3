"""Training resolution as a pure function of the epoch (FFCV's progressive resizing).

A schedule is either an int (one resolution throughout) or points (epoch, resolution) with
increasing epochs, given as a list of pairs or a mapping {epoch: resolution}:
- before the first point: the first resolution; from the last point on: the last resolution;
- at a point's epoch: that point's resolution, exactly as written (so 299 stays 299);
- between two points: linear interpolation, rounded down to a multiple of `multiple` (32).
  Rounding keeps the number of distinct input shapes small: each new shape costs a cudnn
  autotune and a torch.compile recompile. Down, so an epoch never costs more compute than
  the interpolated resolution planned.
Every result is clamped to at least `minimum` (the smallest input the model accepts; 75 for
Inception-v3, the caller's to pass) so rounding down never yields an unusable size.

Epochs may be fractional (a resolution per part of an epoch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from pipelines.errors import UserError

Schedule = int | Mapping | list | tuple


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return _is_int(value) or (isinstance(value, (float, np.floating)) and math.isfinite(value))


def validate_schedule(schedule: Schedule) -> tuple[tuple[float, int], ...]:
    """The schedule as increasing (epoch, resolution) points; UserError with one line if malformed."""
    if _is_int(schedule):
        if schedule < 1:
            raise UserError(f"resolution schedule: resolution must be positive, got {schedule}")
        return ((0.0, int(schedule)),)
    if isinstance(schedule, Mapping):
        items = list(schedule.items())
    elif isinstance(schedule, (list, tuple)):
        items = list(schedule)
    else:
        raise UserError(
            "resolution schedule must be an int or (epoch, resolution) points, "
            f"got {type(schedule).__name__}: {schedule!r}"
        )
    if not items:
        raise UserError("resolution schedule: no (epoch, resolution) points given")
    points: list[tuple[float, int]] = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise UserError(f"resolution schedule: expected an (epoch, resolution) pair, got {item!r}")
        epoch, res = item
        if not _is_number(epoch) or epoch < 0:
            raise UserError(f"resolution schedule: epoch must be a number >= 0, got {epoch!r}")
        if not _is_int(res) or res < 1:
            raise UserError(f"resolution schedule: resolution must be a positive integer, got {res!r}")
        if points and epoch <= points[-1][0]:
            raise UserError(
                f"resolution schedule: epochs must increase, got {epoch!r} after {points[-1][0]!r}"
            )
        points.append((float(epoch), int(res)))
    return tuple(points)


def resolution_at(epoch: float, schedule: Schedule, *, multiple: int = 32, minimum: int = 32) -> int:
    """The training resolution at `epoch` under `schedule` (see the module docstring)."""
    if not _is_number(epoch) or epoch < 0:
        raise UserError(f"epoch must be a number >= 0, got {epoch!r}")
    if not _is_int(multiple) or multiple < 1 or not _is_int(minimum) or minimum < 1:
        raise UserError(f"multiple and minimum must be positive integers, got {multiple!r}, {minimum!r}")
    points = validate_schedule(schedule)
    if epoch <= points[0][0]:
        res = points[0][1]
    elif epoch >= points[-1][0]:
        res = points[-1][1]
    else:
        i = next(k for k, (e, _) in enumerate(points) if e > epoch)
        (e0, r0), (e1, r1) = points[i - 1], points[i]
        if epoch == e0:
            res = r0
        else:
            exact = r0 + (r1 - r0) * (epoch - e0) / (e1 - e0)
            # The 1e-9 keeps float error (191.99999...) from dropping a whole multiple.
            res = math.floor(exact / multiple + 1e-9) * multiple
    return max(int(res), minimum)
