"""Crop geometry, colour distortion and cropped JPEG decoding: pure functions of their inputs and a seed.

Coordinates are integer pixels of the full-resolution image, x to the right and y down; a `Box`
covers columns [left, left + width) and rows [top, top + height).

Pixel ops work on float32 planar (3, H, W) arrays in [0, 1] (the unit TF's image ops use) and
return new arrays; `color_distort` takes and returns uint8 HWC. Planar, because NumPy reductions
over a length-3 last axis are slow: the per-pixel max of a 299x299 image took 3.4 ms on HWC and
0.03 ms on planes here.

Where this follows TF's Inception preprocessing (tensorflow/models, research/slim,
inception_preprocessing.py) and where it departs:
- training crop: sampled as torchvision's RandomResizedCrop does (area fraction uniform, aspect
  ratio log-uniform, 10 attempts, then a central crop clamped to the ratio range), not TF's
  sample_distorted_bounding_box. TF's area range is 5%-100%; the default here is torchvision's
  8%-100%; pass area=(0.05, 1.0) for TF's.
- evaluation crop: TF's central_crop (the central fraction of each side), then the crop is
  resized to a square, squashing the aspect ratio, as TF's eval preprocessing does.
- colour: TF's distort_color (fast_mode=False): one of its four orderings of brightness,
  saturation, hue and contrast, chosen uniformly per image. Hue and saturation act in HSV, as
  tf.image.adjust_hue / adjust_saturation do. Values are clipped to [0, 1] after every op, not
  only at the end as TF does, because HSV of out-of-range values is undefined.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from pipelines.errors import UserError

# Pillow's BILINEAR widens its kernel by the scale factor when shrinking, so it antialiases.
RESAMPLE = Image.Resampling.BILINEAR

# Scale denominators libjpeg can decode at directly (DCT scaling), largest first.
_DRAFT_SCALES = (8, 4, 2, 1)

# TF distort_color's four orderings of the colour ops (fast_mode=False).
COLOR_ORDERINGS = (
    ("brightness", "saturation", "hue", "contrast"),
    ("saturation", "brightness", "contrast", "hue"),
    ("contrast", "hue", "brightness", "saturation"),
    ("hue", "saturation", "contrast", "brightness"),
)


@dataclass(frozen=True)
class Box:
    """A crop rectangle in integer pixels of the image it was computed for."""

    left: int
    top: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def bottom(self) -> int:
        return self.top + self.height

    def as_pil(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), Pillow's crop box convention."""
        return (self.left, self.top, self.right, self.bottom)


def check_range(name: str, bounds, *, low: float, high: float = math.inf) -> tuple[float, float]:
    """`bounds` as a float pair with low < lo <= hi <= high, or a UserError naming `name`."""
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a pair of numbers (min, max), got {bounds!r}") from None
    if not (low < lo <= hi <= high):
        raise UserError(f"{name} must satisfy {low} < min <= max <= {high}, got {bounds!r}")
    return lo, hi


def check_fraction(name: str, value) -> float:
    """`value` as a float in (0, 1], or a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_size(name: str, value) -> int:
    """`value` as a positive int, or a UserError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a positive integer (pixels), got {value!r}")
    return int(value)


def inception_crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Box:
    """A random crop of `width` x `height`: area fraction ~ U(area), aspect (w/h) log-uniform in ratio.

    Width and height are rounded to whole pixels, so on small images the realised area and
    ratio can miss the bounds by up to half a pixel per side. After `attempts` samples that do
    not fit, the central crop of the largest box whose aspect is clamped to `ratio`.
    """
    a_lo, a_hi = check_range("area", area, low=0.0, high=1.0)
    r_lo, r_hi = check_range("ratio", ratio, low=0.0)
    width, height = check_size("width", width), check_size("height", height)
    total = width * height
    log_lo, log_hi = math.log(r_lo), math.log(r_hi)
    for _ in range(attempts):
        target = total * rng.uniform(a_lo, a_hi)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return Box(left, top, w, h)
    return fallback_crop_box(width, height, ratio=(r_lo, r_hi))


def fallback_crop_box(width: int, height: int, *, ratio: tuple[float, float]) -> Box:
    """The central crop of the largest box whose aspect (w/h) is clamped to `ratio`."""
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, min(height, max(1, round(width / ratio[0])))
    elif aspect > ratio[1]:
        w, h = min(width, max(1, round(height * ratio[1]))), height
    else:
        w, h = width, height
    return Box((width - w) // 2, (height - h) // 2, w, h)


def center_crop_box(width: int, height: int, crop_fraction: float = 0.875) -> Box:
    """The central `crop_fraction` of each side, as TF's central_crop computes it.

    Not a square: the box keeps the image's aspect ratio (up to rounding). The margin on each
    side is int((side - side * fraction) / 2), the same on both ends, so the box is exactly
    centred. 0.875 is TF Inception's evaluation fraction (299 of 342).
    """
    crop_fraction = check_fraction("crop_fraction", crop_fraction)
    width, height = check_size("width", width), check_size("height", height)
    dx = int((width - width * crop_fraction) / 2)
    dy = int((height - height * crop_fraction) / 2)
    return Box(dx, dy, width - 2 * dx, height - 2 * dy)


def crop_resize(img: Image.Image, box: Box, out_size: int, *, scale: float = 1.0) -> np.ndarray:
    """`box` of `img` resized to (out_size, out_size, 3) uint8, read-only; `box` in pixels of `img` times `scale`.

    The crop and the resize are one Pillow call, so a box in scaled coordinates keeps its
    sub-pixel position instead of being rounded to the scaled grid.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    s = 1.0 / scale
    region = (box.left * s, box.top * s, box.right * s, box.bottom * s)
    out = img.resize((out_size, out_size), RESAMPLE, box=region)
    return np.asarray(out)


def draft_scale(box: Box, out_size: int) -> int:
    """The largest JPEG DCT scale (1/8, 1/4, 1/2, 1) that leaves `box` >= out_size pixels per side."""
    for s in _DRAFT_SCALES:
        if box.width // s >= out_size and box.height // s >= out_size:
            return s
    return 1


def decode_cropped(jpeg_bytes, box_fn: Callable[[int, int], Box], out_size: int) -> np.ndarray:
    """Decode a JPEG, crop box_fn(width, height), resize to (out_size, out_size, 3) uint8.

    `box_fn` receives the full-resolution size, so the sampled geometry is the same whether or
    not the decoder shrinks the image. Reduced-size decoding (Image.draft) is used where the
    crop keeps at least out_size pixels per side at the reduced scale; libjpeg then skips most
    of the inverse DCT work. A file that Pillow cannot decode raises UserError.
    """
    try:
        img = Image.open(io.BytesIO(jpeg_bytes))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot decode image: {type(err).__name__}: {err}") from err
    width, height = img.size
    box = box_fn(width, height)
    s = draft_scale(box, out_size)
    try:
        scale = 1.0
        if s > 1:
            drafted = img.draft("RGB", (width // s, height // s))
            if drafted is not None:
                # draft returns where the full image lies in the reduced one: (0, 0, W/s, H/s).
                scale = width / drafted[1][2]
        return crop_resize(img, box, out_size, scale=scale)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot decode image: {type(err).__name__}: {err}") from err


def to_planar(img_uint8_hwc: np.ndarray) -> np.ndarray:
    """uint8 HWC [0, 255] -> float32 planar (3, H, W) [0, 1]."""
    # order="C": astype would otherwise keep the HWC memory layout behind the planar view.
    out = img_uint8_hwc.transpose(2, 0, 1).astype(np.float32, order="C")
    out *= np.float32(1 / 255)
    return out


def to_hwc_uint8(planar: np.ndarray) -> np.ndarray:
    """float planar (3, H, W) [0, 1] -> uint8 HWC [0, 255], clipped and rounded to nearest."""
    out = np.clip(planar, 0.0, 1.0) * np.float32(255)
    # np.stack interleaves in 0.08 ms; a transposed copy took 0.33 ms (299x299).
    return np.stack(np.rint(out, out=out).astype(np.uint8), axis=-1)


def adjust_brightness(planar: np.ndarray, delta: float) -> np.ndarray:
    """planar + delta, clipped to [0, 1] (tf.image.adjust_brightness, delta in [0, 1] units)."""
    out = planar + np.float32(delta)
    return np.clip(out, 0.0, 1.0, out=out)


def adjust_contrast(planar: np.ndarray, factor: float) -> np.ndarray:
    """(x - mean) * factor + mean with one mean per channel, as tf.image.adjust_contrast; clipped."""
    mean = planar.mean(axis=(1, 2), dtype=np.float32)[:, None, None]
    out = planar - mean
    out *= np.float32(factor)
    out += mean
    return np.clip(out, 0.0, 1.0, out=out)


def _max_min(planar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, g, b = planar
    return np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)


def adjust_saturation(planar: np.ndarray, factor: float) -> np.ndarray:
    """HSV saturation times `factor`, clamped to 1, hue and value kept (tf.image.adjust_saturation).

    With H and V fixed each channel is V - S * V * k(H), so scaling S is a blend of every
    channel towards the pixel's max; clamping S at 1 caps the blend factor at V / (V - min).
    Input in [0, 1]; output stays in [0, 1].
    """
    v, m = _max_min(planar)
    chroma = v - m
    f = np.divide(v, np.maximum(chroma, np.float32(1e-12)), out=chroma)
    np.minimum(f, np.float32(factor), out=f)
    out = planar - v
    out *= f
    out += v
    return out


def adjust_hue(planar: np.ndarray, delta: float) -> np.ndarray:
    """HSV hue rotated by `delta` turns (1.0 = 360 degrees), S and V kept (tf.image.adjust_hue).

    Input in [0, 1]; output stays in [0, 1].
    """
    r, g, b = planar
    v, m = _max_min(planar)
    chroma = v - m
    r_max = r == v
    g_max = g == v
    g_max &= ~r_max
    b_max = ~(r_max | g_max)
    # Hue in sextants [0, 6): 0 red, 2 green, 4 blue. Masks times terms, not nested np.where,
    # whose branches mispredict on real pixels (0.5 ms of a 299x299 image here).
    h = (g - b) * r_max
    term = b - r
    term += 2 * chroma
    term *= g_max
    h += term
    np.subtract(r, g, out=term)
    term += 4 * chroma
    term *= b_max
    h += term
    h /= np.maximum(chroma, np.float32(1e-12))
    h += np.float32(6 * delta)
    # h mod 6 by floor: np.remainder on float32 was 25x slower here.
    h -= np.floor(h * np.float32(1 / 6)) * np.float32(6)
    # Each channel is min + chroma * (its weight in the fully saturated colour of hue h).
    pure = np.empty_like(planar)
    np.subtract(np.abs(h - 3), 1, out=pure[0])
    np.subtract(2, np.abs(h - 2), out=pure[1])
    np.subtract(2, np.abs(h - 4), out=pure[2])
    np.clip(pure, 0.0, 1.0, out=pure)
    pure *= chroma
    pure += m
    return pure


def color_params(
    rng: np.random.Generator,
    *,
    brightness: float = 32 / 255,
    saturation: tuple[float, float] = (0.5, 1.5),
    hue: float = 0.2,
    contrast: tuple[float, float] = (0.5, 1.5),
) -> tuple[int, dict[str, float]]:
    """(ordering index into COLOR_ORDERINGS, {op: parameter}) drawn from `rng` in a fixed order."""
    ordering = int(rng.integers(len(COLOR_ORDERINGS)))
    params = {
        "brightness": float(rng.uniform(-brightness, brightness)),
        "saturation": float(rng.uniform(*saturation)),
        "hue": float(rng.uniform(-hue, hue)),
        "contrast": float(rng.uniform(*contrast)),
    }
    return ordering, params


_COLOR_OPS = {
    "brightness": (adjust_brightness, 0.0),
    "saturation": (adjust_saturation, 1.0),
    "hue": (adjust_hue, 0.0),
    "contrast": (adjust_contrast, 1.0),
}


def apply_color(img: np.ndarray, ordering: int, params: dict[str, float]) -> np.ndarray:
    """The colour ops of COLOR_ORDERINGS[ordering] on float planar [0, 1]; identity parameters are skipped."""
    out = img
    for name in COLOR_ORDERINGS[ordering]:
        op, identity = _COLOR_OPS[name]
        if params[name] != identity:
            out = op(out, params[name])
    return out


def color_distort(
    img_uint8_hwc: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float = 32 / 255,
    saturation: tuple[float, float] = (0.5, 1.5),
    hue: float = 0.2,
    contrast: tuple[float, float] = (0.5, 1.5),
) -> np.ndarray:
    """TF Inception's distort_color on uint8 HWC: a random ordering, random strengths; uint8 out.

    brightness: max |delta| in [0, 1] units; saturation, contrast: factor ranges; hue: max
    |delta| in turns of the HSV hue circle. TF's values are the defaults.
    """
    ordering, params = color_params(
        rng, brightness=brightness, saturation=saturation, hue=hue, contrast=contrast
    )
    return to_hwc_uint8(apply_color(to_planar(img_uint8_hwc), ordering, params))
