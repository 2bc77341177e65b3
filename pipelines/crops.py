"""Multi-crop evaluation protocols, by name: `PROTOCOLS[name](img, resolution, crop_fraction)`.

Every protocol takes an RGB PIL image and returns uint8 (n_crops, R, R, 3), R = resolution. The
evaluator averages the softmax over the crops. Resizing is Pillow's antialiased bilinear; a
resize "to shorter side S" keeps the aspect ratio, the longer side truncated to an integer
(S * long // short), as torchvision's Resize does. "Centre" offsets are (side - crop) // 2.

Crop order, fixed so that geometry can be checked:
- "1": one crop, no mirror. The central crop_fraction of each side (TF's central_crop, the box
  `eval_transform` uses), resized to R x R; the same code as evaluation during training.
- "10": shorter side resized to round(R / crop_fraction) (342 for 299, torchvision's 342/299);
  crops 0-4: top-left, top-right, bottom-left, bottom-right, centre, each R x R; crops 5-9:
  the mirrors of crops 0-4, in the same order.
- "144": GoogLeNet's protocol (arXiv 1409.4842, section 7). Shorter side resized to
  round(s * R / 224) for s = 256, 288, 320, 352 (342, 384, 427, 470 for R = 299); at each
  scale, the left, centre and right squares of side S (top, centre, bottom for portrait
  images; a square image gives the same square three times); from each square, six crops:
  top-left, top-right, bottom-left, bottom-right, centre (R x R each) and the whole square
  resized to R x R. Crops 0-71 in the order (scale ascending, square, crop); crops 72-143 their
  mirrors in the same order: crop i = 72 * mirrored + 18 * scale + 6 * square + crop.
- "12": no source defines it; here it is one scale of the 144 protocol: the centre square at
  shorter side round(256 * R / 224) (342 for 299, GoogLeNet's smallest scale), its six crops in
  the 144 order, then their six mirrors: 1 scale x 6 crops x 2 mirrors.

crop_fraction sets the geometry of "1" and "10"; the scales of "12" and "144" are GoogLeNet's
and do not depend on it (its 256/224 equals 1/0.875, the default fraction).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

from pipelines.augment import (
    RESAMPLE,
    Box,
    center_crop_box,
    check_fraction,
    check_size,
    crop_resize,
)
from pipelines.errors import UserError

# GoogLeNet's shorter sides for its 224 input (arXiv 1409.4842, section 7).
GOOGLENET_SCALES = (256, 288, 320, 352)
GOOGLENET_INPUT = 224


def resize_shorter(img: Image.Image, side: int) -> Image.Image:
    """`img` resized so its shorter side is `side`, aspect kept (longer side truncated)."""
    width, height = img.size
    if width <= height:
        size = (side, side * height // width)
    else:
        size = (side * width // height, side)
    return img.resize(size, RESAMPLE)


def corner_center_boxes(width: int, height: int, crop: int) -> list[Box]:
    """Top-left, top-right, bottom-left, bottom-right and centre crop x crop boxes."""
    right, bottom = width - crop, height - crop
    return [
        Box(0, 0, crop, crop),
        Box(right, 0, crop, crop),
        Box(0, bottom, crop, crop),
        Box(right, bottom, crop, crop),
        Box(right // 2, bottom // 2, crop, crop),
    ]


def three_squares(width: int, height: int) -> list[Box]:
    """Left, centre, right squares of side min(width, height); top, centre, bottom if portrait."""
    side = min(width, height)
    if width >= height:
        return [Box(x, 0, side, side) for x in (0, (width - side) // 2, width - side)]
    return [Box(0, y, side, side) for y in (0, (height - side) // 2, height - side)]


def googlenet_scale(scale: int, resolution: int) -> int:
    """GoogLeNet's shorter side `scale` (for a 224 input) scaled to `resolution`."""
    return round(scale * resolution / GOOGLENET_INPUT)


def _cut(pixels: np.ndarray, box: Box) -> np.ndarray:
    return pixels[box.top : box.bottom, box.left : box.right]


def _with_mirrors(crops: list[np.ndarray]) -> np.ndarray:
    stack = np.stack(crops)
    return np.concatenate([stack, stack[:, :, ::-1]])


def _square_crops(resized: Image.Image, square: Box, resolution: int) -> list[np.ndarray]:
    """The six crops of one square of `resized`: four corners, centre, whole square resized."""
    pixels = np.asarray(resized)
    crops = [
        _cut(pixels, Box(square.left + b.left, square.top + b.top, b.width, b.height))
        for b in corner_center_boxes(square.width, square.height, resolution)
    ]
    crops.append(crop_resize(resized, square, resolution))
    return crops


def _checked(img: Image.Image, resolution: int, crop_fraction: float):
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img, check_size("resolution", resolution), check_fraction("crop_fraction", crop_fraction)


def one_crop(img: Image.Image, resolution: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Protocol "1": the central crop_fraction of each side, resized to R x R; (1, R, R, 3)."""
    img, resolution, crop_fraction = _checked(img, resolution, crop_fraction)
    return crop_resize(img, center_crop_box(*img.size, crop_fraction), resolution)[None]


def ten_crops(img: Image.Image, resolution: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Protocol "10": four corners and centre at shorter side R / crop_fraction, then mirrors."""
    img, resolution, crop_fraction = _checked(img, resolution, crop_fraction)
    resized = resize_shorter(img, round(resolution / crop_fraction))
    pixels = np.asarray(resized)
    boxes = corner_center_boxes(*resized.size, resolution)
    return _with_mirrors([_cut(pixels, b) for b in boxes])


def twelve_crops(img: Image.Image, resolution: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Protocol "12": the 144 protocol's six crops of the centre square at its smallest scale, then mirrors."""
    img, resolution, _ = _checked(img, resolution, crop_fraction)
    resized = resize_shorter(img, googlenet_scale(GOOGLENET_SCALES[0], resolution))
    centre = three_squares(*resized.size)[1]
    return _with_mirrors(_square_crops(resized, centre, resolution))


def googlenet_crops(img: Image.Image, resolution: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Protocol "144": 4 scales x 3 squares x 6 crops, then the mirrors of all 72."""
    img, resolution, _ = _checked(img, resolution, crop_fraction)
    crops = []
    for scale in GOOGLENET_SCALES:
        resized = resize_shorter(img, googlenet_scale(scale, resolution))
        for square in three_squares(*resized.size):
            crops.extend(_square_crops(resized, square, resolution))
    return _with_mirrors(crops)


PROTOCOLS: dict[str, Callable[..., np.ndarray]] = {
    "1": one_crop,
    "10": ten_crops,
    "12": twelve_crops,
    "144": googlenet_crops,
}


def protocol(name) -> Callable[..., np.ndarray]:
    """The protocol function for `name` ("1", "10", "12", "144"; an int is read as its digits)."""
    try:
        return PROTOCOLS[str(name).strip()]
    except KeyError:
        known = ", ".join(PROTOCOLS)
        raise UserError(f"unknown crop protocol {name!r}; known protocols: {known}") from None
