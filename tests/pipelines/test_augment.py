"""Crop geometry, colour ops and cropped decoding in pipelines.augment: exact, on generated images."""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
import pytest
from PIL import Image

from pipelines import augment as A
from pipelines.errors import UserError

pytestmark = pytest.mark.unit

SHAPES = [
    (500, 375),
    (375, 500),
    (299, 299),
    (1, 1),
    (2, 3),
    (7, 5),
    (16, 9),
    (1000, 10),
    (10, 1000),
    (4000, 3),
    (3, 4000),
    (64, 48),
]
RANGES = [
    ((0.08, 1.0), (3 / 4, 4 / 3)),
    ((0.05, 1.0), (3 / 4, 4 / 3)),
    ((0.5, 0.5), (1.0, 1.0)),
    ((0.25, 1.0), (1 / 2, 2.0)),
]


def coord_image(width: int, height: int) -> np.ndarray:
    """R rises with x, G with y, B constant: a crop's mean colour says where it came from."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.rint(np.stack([x, y, np.full_like(x, 128)], -1)).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def within_rounded_bounds(box: A.Box, width: int, height: int, area, ratio) -> bool:
    """True if some real (w, h) within half a pixel of the box meets the area and ratio bounds."""
    w, h, total = box.width, box.height, width * height
    return (
        (w - 0.5) * (h - 0.5) <= area[1] * total + 1e-9
        and (w + 0.5) * (h + 0.5) >= area[0] * total - 1e-9
        and (w - 0.5) / (h + 0.5) <= ratio[1] + 1e-9
        and (w + 0.5) / (h - 0.5) >= ratio[0] - 1e-9
    )


# --- Box ---------------------------------------------------------------------------------


def test_box_edges_and_pil_convention():
    box = A.Box(3, 4, 10, 20)
    assert (box.right, box.bottom) == (13, 24)
    assert box.as_pil() == (3, 4, 13, 24)


# --- inception_crop_box ----------------------------------------------------------------------


@pytest.mark.parametrize("width,height", SHAPES)
@pytest.mark.parametrize("area,ratio", RANGES)
def test_inception_box_inside_image_and_within_bounds_or_fallback(width, height, area, ratio):
    fallback = A.fallback_crop_box(width, height, ratio=ratio)
    for seed in range(150):
        box = A.inception_crop_box(np.random.default_rng(seed), width, height, area=area, ratio=ratio)
        assert all(isinstance(v, int) for v in (box.left, box.top, box.width, box.height))
        assert box.width >= 1 and box.height >= 1
        assert 0 <= box.left and box.right <= width
        assert 0 <= box.top and box.bottom <= height
        assert box == fallback or within_rounded_bounds(box, width, height, area, ratio)


@pytest.mark.parametrize("width,height", SHAPES)
def test_inception_box_is_deterministic_for_a_seed(width, height):
    draws = [
        [A.inception_crop_box(np.random.default_rng(seed), width, height) for seed in range(20)]
        for _ in range(2)
    ]
    assert draws[0] == draws[1]


def test_inception_box_varies_with_seed():
    boxes = {A.inception_crop_box(np.random.default_rng(s), 500, 375) for s in range(50)}
    assert len(boxes) > 45


def test_inception_box_area_uniform_and_ratio_log_uniform():
    # On a square image every draw with area <= 3/4 fits, so below 3/4 the accepted areas stay
    # uniform and the log ratios uniform and symmetric.
    rng = np.random.default_rng(0)
    side = 2000
    boxes = [A.inception_crop_box(rng, side, side) for _ in range(4000)]
    areas = np.array([b.width * b.height for b in boxes]) / side**2
    logr = np.log([b.width / b.height for b in boxes])
    low = areas <= 0.75
    assert low.sum() > 2500
    assert abs(np.mean(areas[low] <= 0.5) - (0.5 - 0.08) / (0.75 - 0.08)) < 0.03
    assert abs(np.mean(logr[low])) < 0.01
    assert abs(np.mean(logr[low] < 0) - 0.5) < 0.03
    assert abs(np.mean(np.abs(logr[low]) < math.log(4 / 3) / 2) - 0.5) < 0.03
    assert areas.min() < 0.09 and areas.max() > 0.95


@pytest.mark.parametrize(
    "width,height,expected",
    [
        (1000, 10, A.Box(493, 0, 13, 10)),
        (10, 1000, A.Box(0, 493, 10, 13)),
        (400, 300, A.Box(0, 0, 400, 300)),
        (640, 480, A.Box(0, 0, 640, 480)),
        (1, 1, A.Box(0, 0, 1, 1)),
        (1, 1000, A.Box(0, 499, 1, 1)),
        (1000, 1, A.Box(499, 0, 1, 1)),
    ],
)
def test_fallback_is_central_and_clamped_to_ratio(width, height, expected):
    rng = np.random.default_rng(0)
    assert A.inception_crop_box(rng, width, height, attempts=0) == expected


def test_whole_image_square_crop_falls_back_on_landscape():
    # Area 1 at ratio 1 never fits 640x480: after 10 failures, the central crop clamped to ratio 1.
    box = A.inception_crop_box(np.random.default_rng(1), 640, 480, area=(1, 1), ratio=(1, 1))
    assert box == A.Box(80, 0, 480, 480)
    box = A.inception_crop_box(np.random.default_rng(1), 300, 300, area=(1, 1), ratio=(1, 1))
    assert box == A.Box(0, 0, 300, 300)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"area": (0.0, 1.0)},
        {"area": (0.5, 0.2)},
        {"area": (0.1, 1.5)},
        {"area": (0.1,)},
        {"area": "big"},
        {"ratio": (-1.0, 2.0)},
        {"ratio": (2.0, 1.0)},
    ],
)
def test_inception_box_rejects_bad_ranges(kwargs):
    with pytest.raises(UserError):
        A.inception_crop_box(np.random.default_rng(0), 100, 100, **kwargs)


@pytest.mark.parametrize("width,height", [(0, 10), (10, 0), (-1, 5), (2.5, 3)])
def test_inception_box_rejects_bad_sizes(width, height):
    with pytest.raises(UserError):
        A.inception_crop_box(np.random.default_rng(0), width, height)


# --- center_crop_box -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width,height,fraction,expected",
    [
        (500, 375, 0.875, A.Box(31, 23, 438, 329)),
        (375, 500, 0.875, A.Box(23, 31, 329, 438)),
        (342, 342, 0.875, A.Box(21, 21, 300, 300)),
        (100, 100, 1.0, A.Box(0, 0, 100, 100)),
        (100, 50, 0.5, A.Box(25, 12, 50, 26)),
        (1, 1, 0.875, A.Box(0, 0, 1, 1)),
        (1000, 10, 0.875, A.Box(62, 0, 876, 10)),
    ],
)
def test_center_crop_box_known_values(width, height, fraction, expected):
    assert A.center_crop_box(width, height, fraction) == expected


@pytest.mark.parametrize("width,height", SHAPES)
@pytest.mark.parametrize("fraction", [0.875, 0.5, 0.95, 1.0, 0.01])
def test_center_crop_box_is_central_and_keeps_the_fraction(width, height, fraction):
    box = A.center_crop_box(width, height, fraction)
    assert box.left == width - box.right and box.top == height - box.bottom
    assert fraction * width <= box.width < fraction * width + 2
    assert fraction * height <= box.height < fraction * height + 2


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, "0.875", True])
def test_center_crop_box_rejects_bad_fraction(fraction):
    with pytest.raises(UserError):
        A.center_crop_box(100, 100, fraction)


# --- decode_cropped --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box,out_size,scale",
    [
        (A.Box(0, 0, 800, 800), 100, 8),
        (A.Box(0, 0, 799, 800), 100, 4),
        (A.Box(0, 0, 400, 2000), 100, 4),
        (A.Box(0, 0, 200, 200), 100, 2),
        (A.Box(0, 0, 199, 200), 100, 1),
        (A.Box(0, 0, 99, 99), 100, 1),
        (A.Box(0, 0, 2392, 2392), 299, 8),
        (A.Box(0, 0, 2391, 2392), 299, 4),
    ],
)
def test_draft_scale_keeps_out_size_pixels_per_side(box, out_size, scale):
    assert A.draft_scale(box, out_size) == scale


def test_decode_cropped_shape_dtype_and_box_fn_sees_full_size():
    seen = []

    def box_fn(w, h):
        seen.append((w, h))
        return A.center_crop_box(w, h)

    out = A.decode_cropped(encode(coord_image(1600, 1200), quality=95), box_fn, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert seen == [(1600, 1200)]


@pytest.mark.parametrize("seed", range(12))
def test_draft_decoding_matches_full_decoding(seed):
    # 1600x1200 with out_size 64: any crop wider and taller than 128 is drafted.
    width, height, out_size = 1600, 1200, 64
    data = encode(coord_image(width, height), quality=95)
    box = A.inception_crop_box(np.random.default_rng(seed), width, height)
    drafted = A.decode_cropped(data, lambda w, h: box, out_size)
    full = A.crop_resize(Image.open(io.BytesIO(data)), box, out_size)
    diff = np.abs(drafted.astype(int) - full.astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 3


@pytest.mark.parametrize("box", [A.Box(0, 0, 1600, 1200), A.Box(800, 600, 800, 600), A.Box(100, 900, 300, 300)])
def test_decoded_crop_comes_from_the_box(box):
    # Mean R says the crop's mean x, mean G its mean y: both must match the box's centre.
    width, height = 1600, 1200
    out = A.decode_cropped(encode(coord_image(width, height), quality=95), lambda w, h: box, 32)
    mean_x = out[..., 0].mean() / 255 * (width - 1)
    mean_y = out[..., 1].mean() / 255 * (height - 1)
    assert abs(mean_x - (box.left + box.width / 2)) < 6
    assert abs(mean_y - (box.top + box.height / 2)) < 6
    assert out[:, 0, 0].mean() < out[:, -1, 0].mean() and out[0, :, 1].mean() < out[-1, :, 1].mean()


def test_decode_cropped_without_draft_equals_crop_resize():
    data = encode(coord_image(200, 150), quality=95)
    box = A.Box(10, 20, 120, 90)
    assert A.draft_scale(box, 80) == 1
    got = A.decode_cropped(data, lambda w, h: box, 80)
    assert np.array_equal(got, A.crop_resize(Image.open(io.BytesIO(data)), box, 80))


def test_decode_cropped_grayscale_and_png():
    gray = np.tile(np.linspace(0, 255, 400).astype(np.uint8), (300, 1))
    out = A.decode_cropped(encode(gray), A.center_crop_box, 40)
    assert out.shape == (40, 40, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    # PNG: no reduced-size decoding, same geometry.
    arr = coord_image(1600, 1200)
    png = A.decode_cropped(encode(arr, "PNG"), A.center_crop_box, 64)
    ref = A.crop_resize(Image.fromarray(arr), A.center_crop_box(1600, 1200), 64)
    assert np.array_equal(png, ref)


@pytest.mark.parametrize(
    "data",
    [b"", b"not a jpeg", encode(coord_image(64, 48))[:200], b"\xff\xd8\xff" + b"\x00" * 100],
)
def test_decode_cropped_raises_user_error_on_corrupt_data(data):
    with pytest.raises(UserError, match="cannot decode image"):
        A.decode_cropped(data, A.center_crop_box, 32)


# --- colour ops ------------------------------------------------------------------------------


def const_planar(rgb, shape=(4, 5)) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.float32)[:, None, None], (3, *shape)).copy()


def random_planar(seed: int, n: int = 500) -> np.ndarray:
    return np.random.default_rng(seed).random((3, 1, n), dtype=np.float32)


def test_planar_round_trip_is_exact():
    img = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    planar = A.to_planar(img)
    assert planar.shape == (3, 17, 23) and planar.dtype == np.float32 and planar.flags.c_contiguous
    assert np.array_equal(A.to_hwc_uint8(planar), img)


@pytest.mark.parametrize(
    "value,delta,expected",
    [(100, 32, 132), (100, -32, 68), (250, 32, 255), (10, -32, 0), (0, 0, 0), (255, 255, 255)],
)
def test_brightness_on_a_constant_image(value, delta, expected):
    img = np.full((6, 7, 3), value, np.uint8)
    out = A.to_hwc_uint8(A.adjust_brightness(A.to_planar(img), delta / 255))
    assert np.all(out == expected)


def test_contrast_extremes():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0] = (40, 100, 200)
    img[1] = (80, 200, 100)
    planar = A.to_planar(img)
    flat = A.to_hwc_uint8(A.adjust_contrast(planar, 0.0))
    assert np.all(flat == np.array([60, 150, 150], np.uint8))
    assert np.array_equal(A.to_hwc_uint8(A.adjust_contrast(planar, 1.0)), img)
    doubled = A.to_hwc_uint8(A.adjust_contrast(planar, 2.0))
    assert doubled[0, 0].tolist() == [20, 50, 250] and doubled[1, 0].tolist() == [100, 250, 50]


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0, 1.5, 3.0, 100.0])
def test_saturation_matches_hsv(factor):
    pixels = random_planar(1)
    got = A.adjust_saturation(pixels, factor)[:, 0, :].T
    expected = []
    for rgb in pixels[:, 0, :].T.astype(float):
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        expected.append(colorsys.hsv_to_rgb(h, min(1.0, s * factor), v))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_saturation_zero_gives_the_hsv_value_grey():
    out = A.adjust_saturation(const_planar((0.2, 0.6, 0.4)), 0.0)
    np.testing.assert_allclose(out, const_planar((0.6, 0.6, 0.6)), atol=1e-7)


@pytest.mark.parametrize("delta", [0.0, 0.2, -0.2, 0.5, 1 / 3, 0.9, -1.7])
def test_hue_matches_hsv(delta):
    pixels = random_planar(2)
    got = A.adjust_hue(pixels, delta)[:, 0, :].T
    expected = []
    for rgb in pixels[:, 0, :].T.astype(float):
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        expected.append(colorsys.hsv_to_rgb((h + delta) % 1.0, s, v))
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    "rgb,delta,expected",
    [
        ((1, 0, 0), 1 / 3, (0, 1, 0)),
        ((1, 0, 0), 2 / 3, (0, 0, 1)),
        ((1, 0, 0), 0.2, (0.8, 1, 0)),
        ((1, 0, 0), -0.2, (0.8, 0, 1)),
        ((0, 1, 0), 1 / 3, (0, 0, 1)),
        ((0.5, 0.5, 0.5), 0.2, (0.5, 0.5, 0.5)),
        ((0, 0, 0), 0.4, (0, 0, 0)),
        ((1, 1, 1), 0.4, (1, 1, 1)),
    ],
)
def test_hue_on_known_pixels(rgb, delta, expected):
    np.testing.assert_allclose(A.adjust_hue(const_planar(rgb), delta), const_planar(expected), atol=1e-6)


def test_color_distort_identity_when_every_range_is_degenerate():
    img = np.random.default_rng(3).integers(0, 256, (31, 29, 3), dtype=np.uint8)
    out = A.color_distort(
        img, np.random.default_rng(0), brightness=0.0, saturation=(1, 1), hue=0.0, contrast=(1, 1)
    )
    assert np.array_equal(out, img)


def test_color_distort_is_deterministic_and_varies_with_seed():
    img = np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    a = A.color_distort(img, np.random.default_rng(7))
    b = A.color_distort(img, np.random.default_rng(7))
    c = A.color_distort(img, np.random.default_rng(8))
    assert a.shape == img.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(img, np.random.default_rng(4).integers(0, 256, (20, 30, 3), dtype=np.uint8))


def test_color_distort_applies_the_drawn_ordering():
    img = np.random.default_rng(5).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    orderings = set()
    for seed in range(40):
        ordering, params = A.color_params(np.random.default_rng(seed))
        orderings.add(ordering)
        x = A.to_planar(img)
        for name in A.COLOR_ORDERINGS[ordering]:
            x = getattr(A, f"adjust_{name}")(x, params[name])
        expected = A.to_hwc_uint8(x)
        assert np.array_equal(A.color_distort(img, np.random.default_rng(seed)), expected)
        assert abs(params["brightness"]) <= 32 / 255 and abs(params["hue"]) <= 0.2
        assert 0.5 <= params["saturation"] <= 1.5 and 0.5 <= params["contrast"] <= 1.5
    assert orderings == {0, 1, 2, 3}


def test_color_orderings_are_tf_distort_color():
    # TF slim's distort_color, fast_mode=False, color_ordering 0..3.
    assert A.COLOR_ORDERINGS == (
        ("brightness", "saturation", "hue", "contrast"),
        ("saturation", "brightness", "contrast", "hue"),
        ("contrast", "hue", "brightness", "saturation"),
        ("hue", "saturation", "contrast", "brightness"),
    )
