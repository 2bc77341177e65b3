"""TF Inception's colour distortion on the training device: batched tensor ops, no host-device sync.

The CPU version (pipelines.augment.color_distort) cost 1.3 of the transform's 3.9 CPU ms per image
and bounded the GPU loader (docs/benchmarks.md, "Loader"). This moves it into the training step,
after the images reach the device, with the same math, order of ops and parameter ranges:
- per image, one of TF distort_color's four orderings (pipelines.augment.COLOR_ORDERINGS) of
  brightness, saturation, hue and contrast, with strengths drawn by pipelines.augment.color_params;
- hue and saturation act in HSV, as tf.image.adjust_hue / adjust_saturation do;
- values are clipped to [0, 1] after every op. (The NumPy saturation and hue stay in [0, 1] up to
  float rounding and are not clipped there; clipping here removes only that rounding.)

The step never waits on the device: nothing on the device path reads a tensor value on the host
(no .item(), boolean-mask indexing, nonzero, or Python branches on tensor values). So the host
draws the parameters and groups the batch by ordering (`draw`), the caller permutes images and
labels on the host (order within a batch does not matter) and ships `params`, and the device runs
each group's four ops on a contiguous slice (`distort`): four ops per image rather than all
sixteen op/position combinations on the whole batch.

Tensors are (N, 3, H, W) in [0, 1], any memory format; the ops compute in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.augment import COLOR_ORDERINGS, color_params

# The columns of ColorDraws.params and of the `params` tensor `distort` takes.
PARAM_COLUMNS = ("brightness", "saturation", "hue", "contrast")

# The chroma floor of the divisions, as on the CPU: grey pixels (chroma 0) get hue 0 and saturation
# factor capped at V / 1e-12, which leaves them grey either way; it only avoids 0 / 0.
_TINY = 1e-12


@dataclass(frozen=True)
class ColorDraws:
    """One batch's colour parameters, grouped by ordering.

    order: int64 (N,), a permutation of the batch's rows: row order[i] of the batch goes to
        position i.
    params: float32 (N, 4), per permuted position, columns PARAM_COLUMNS.
    groups: (ordering index into COLOR_ORDERINGS, start, stop) for each non-empty group, in
        ordering order; the group holds positions [start, stop) of the permuted batch.
    """

    order: np.ndarray
    params: np.ndarray
    groups: tuple[tuple[int, int, int], ...]


def draw(n: int, *, seed: int, rank: int, step: int) -> ColorDraws:
    """The colour draws of a batch of `n` images: TF's default ranges, grouped by ordering.

    One generator, np.random.default_rng([seed, rank, step]), per batch; image i's ordering and
    parameters are the i-th call of pipelines.augment.color_params on it, so their distribution is
    exactly the CPU path's. A stable sort by ordering gives `order`. Pure in its arguments: a
    resumed run at the same global step draws the same.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([seed, rank, step])
    orderings = np.empty(n, dtype=np.int64)
    params = np.empty((n, len(PARAM_COLUMNS)), dtype=np.float32)
    for i in range(n):
        orderings[i], drawn = color_params(rng)
        params[i] = [drawn[name] for name in PARAM_COLUMNS]
    order = np.argsort(orderings, kind="stable").astype(np.int64)
    counts = np.bincount(orderings, minlength=len(COLOR_ORDERINGS))
    groups, start = [], 0
    for ordering, count in enumerate(counts.tolist()):
        if count:
            groups.append((ordering, start, start + count))
            start += count
    return ColorDraws(order=order, params=params[order], groups=tuple(groups))


def _per_image(param: torch.Tensor) -> torch.Tensor:
    """(N,) parameters -> float32 (N, 1, 1, 1), to broadcast over an image batch."""
    return param.to(torch.float32).reshape(-1, 1, 1, 1)


def _max_min(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)


def adjust_brightness(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x + delta per image, clipped to [0, 1] (tf.image.adjust_brightness, delta in [0, 1] units)."""
    return (x.float() + _per_image(delta)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """(x - mean) * factor + mean, one mean per image and channel over H, W (tf.image.adjust_contrast); clipped."""
    x = x.float()
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean).mul_(_per_image(factor)).add_(mean).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """HSV saturation times `factor` per image, clamped to 1, hue and value kept (tf.image.adjust_saturation).

    With H and V fixed each channel is V - S * V * k(H), so scaling S is a blend of every channel
    towards the pixel's max; clamping S at 1 caps the blend factor at V / (V - min). Clipped to
    [0, 1].
    """
    x = x.float()
    v, m = _max_min(x)
    f = torch.minimum(v / (v - m).clamp_min_(_TINY), _per_image(factor))
    return (x - v).mul_(f).add_(v).clamp_(0.0, 1.0)


# Each channel's weight in the fully saturated colour of hue h (sextants, [0, 6)), before clipping
# to [0, 1]: red |h - 3| - 1, green 2 - |h - 2|, blue 2 - |h - 4|, as (centre, sign, offset) of
# sign * |h - centre| + offset. Python floats, not a constant tensor: building one on the device
# copies from pageable host memory, which waits for the stream.
_HUE_WEIGHTS = ((3.0, 1.0, -1.0), (2.0, -1.0, 2.0), (4.0, -1.0, 2.0))


def adjust_hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """HSV hue rotated by `delta` turns per image (1.0 = 360 degrees), S and V kept (tf.image.adjust_hue).

    Clipped to [0, 1].
    """
    x = x.float()
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v, m = _max_min(x)
    chroma = v - m
    r_max = r == v
    g_max = (g == v) & ~r_max
    # Hue in sextants [0, 6): 0 red, 2 green, 4 blue; ties go to red, then green, as on the CPU.
    h = torch.where(r_max, g - b, torch.where(g_max, b - r + 2 * chroma, r - g + 4 * chroma))
    h = h.div_(chroma.clamp_min(_TINY)).add_(6 * _per_image(delta))
    h = h.sub_(torch.floor(h * (1 / 6)) * 6)
    # Each channel is min + chroma * (its weight in the fully saturated colour of hue h).
    pure = torch.empty_like(x)
    for c, (centre, sign, offset) in enumerate(_HUE_WEIGHTS):
        weight = pure[:, c : c + 1]
        torch.sub(h, centre, out=weight)
        weight.abs_().mul_(sign).add_(offset)
    return pure.clamp_(0.0, 1.0).mul_(chroma).add_(m).clamp_(0.0, 1.0)


_COLOR_OPS = {
    "brightness": adjust_brightness,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
    "contrast": adjust_contrast,
}


def distort(x: torch.Tensor, params: torch.Tensor, groups) -> torch.Tensor:
    """Each group's ordering of the colour ops on its slice of `x`; a new float32 tensor in [0, 1].

    x: float (N, 3, H, W) in [0, 1], any memory format (the output keeps it), already permuted by
    ColorDraws.order. params: float (N, 4) on x's device, columns PARAM_COLUMNS (ColorDraws.params).
    groups: ColorDraws.groups; they must cover [0, N) (checked on the host, from shapes and ints
    only). Identity parameters are applied, not skipped: skipping would read them on the host.
    """
    n = x.shape[0]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (N, 3, H, W), got {tuple(x.shape)}")
    if tuple(params.shape) != (n, len(PARAM_COLUMNS)):
        raise ValueError(f"params must be ({n}, {len(PARAM_COLUMNS)}), got {tuple(params.shape)}")
    covered = 0
    for ordering, start, stop in groups:
        if not (0 <= ordering < len(COLOR_ORDERINGS) and start == covered and stop >= start):
            raise ValueError(f"groups must be contiguous from 0 with orderings in [0, 4), got {groups!r}")
        covered = stop
    if covered != n:
        raise ValueError(f"groups must cover [0, {n}), got {groups!r}")
    out = torch.empty_like(x, dtype=torch.float32)
    for ordering, start, stop in groups:
        if stop == start:
            continue
        y, p = x[start:stop], params[start:stop]
        for name in COLOR_ORDERINGS[ordering]:
            y = _COLOR_OPS[name](y, p[:, PARAM_COLUMNS.index(name)])
        out[start:stop] = y
    return out
