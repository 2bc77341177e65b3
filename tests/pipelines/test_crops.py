"""Multi-crop protocols of pipelines.crops: counts, order and geometry on images of known content."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import crops as C
from pipelines.augment import RESAMPLE, Box, center_crop_box, crop_resize
from pipelines.errors import UserError

pytestmark = pytest.mark.unit

LANDSCAPE, PORTRAIT, SQUARE = (120, 90), (90, 120), (100, 100)


def coord_image(width: int, height: int) -> Image.Image:
    """R rises with x, G with y, B constant: a crop's mean colour says where it came from."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.rint(np.stack([x, y, np.full_like(x, 128)], -1)).astype(np.uint8))


def mean_rg(crop: np.ndarray) -> tuple[float, float]:
    return float(crop[..., 0].mean()), float(crop[..., 1].mean())


def cut(pixels: np.ndarray, left: int, top: int, size: int) -> np.ndarray:
    return pixels[top : top + size, left : left + size]


def reference_144(img: Image.Image, res: int) -> np.ndarray:
    """GoogLeNet's 144 crops written out directly from the paper's description."""
    width, height = img.size
    out = []
    for s in (256, 288, 320, 352):
        side = round(s * res / 224)
        size = (side, side * height // width) if width <= height else (side * width // height, side)
        resized = img.resize(size, RESAMPLE)
        pixels = np.asarray(resized)
        w, h = size
        if w >= h:
            squares = [(0, 0), ((w - side) // 2, 0), (w - side, 0)]
        else:
            squares = [(0, 0), (0, (h - side) // 2), (0, h - side)]
        for x, y in squares:
            m = side - res
            for dx, dy in [(0, 0), (m, 0), (0, m), (m, m), (m // 2, m // 2)]:
                out.append(cut(pixels, x + dx, y + dy, res))
            out.append(np.asarray(resized.resize((res, res), RESAMPLE, box=(x, y, x + side, y + side))))
    stack = np.stack(out)
    return np.concatenate([stack, stack[:, :, ::-1]])


# --- counts and formats ----------------------------------------------------------------------


@pytest.mark.parametrize("name,count", [("1", 1), ("10", 10), ("12", 12), ("144", 144)])
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (300, 300), (3, 2), (2, 3), (400, 20), (20, 400)])
def test_counts_shapes_dtypes(name, count, size):
    out = C.PROTOCOLS[name](coord_image(*size), 48)
    assert out.shape == (count, 48, 48, 3) and out.dtype == np.uint8


def test_144_at_299():
    out = C.PROTOCOLS["144"](coord_image(500, 375), 299)
    assert out.shape == (144, 299, 299, 3)


def test_googlenet_scales():
    assert [C.googlenet_scale(s, 224) for s in C.GOOGLENET_SCALES] == [256, 288, 320, 352]
    # 288 * 299 / 224 = 384.43: rounds to 384.
    assert [C.googlenet_scale(s, 299) for s in C.GOOGLENET_SCALES] == [342, 384, 427, 470]
    assert [C.googlenet_scale(s, 64) for s in C.GOOGLENET_SCALES] == [73, 82, 91, 101]


@pytest.mark.parametrize(
    "size,side,expected",
    [
        (LANDSCAPE, 73, (97, 73)),
        (PORTRAIT, 73, (73, 97)),
        (SQUARE, 73, (73, 73)),
        ((500, 375), 342, (456, 342)),
        ((375, 500), 342, (342, 456)),
        ((400, 20), 55, (1100, 55)),
    ],
)
def test_resize_shorter(size, side, expected):
    assert C.resize_shorter(coord_image(*size), side).size == expected


def test_mode_l_input_is_converted():
    out = C.PROTOCOLS["10"](coord_image(*LANDSCAPE).convert("L"), 32)
    assert out.shape == (10, 32, 32, 3)
    assert np.array_equal(out[..., 0], out[..., 1])


# --- "1" ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [LANDSCAPE, PORTRAIT, SQUARE, (500, 375)])
@pytest.mark.parametrize("fraction", [0.875, 0.5, 1.0])
def test_one_crop_is_the_central_fraction(size, fraction):
    img = coord_image(*size)
    out = C.PROTOCOLS["1"](img, 40, fraction)
    assert np.array_equal(out[0], crop_resize(img, center_crop_box(*size, fraction), 40))
    r, g = mean_rg(out[0])
    assert abs(r - 127.5) < 2 and abs(g - 127.5) < 2


def test_one_crop_half_fraction_covers_the_middle_half():
    out = C.PROTOCOLS["1"](coord_image(200, 100), 50, 0.5)[0]
    assert out[..., 0].min() >= 255 * 0.24 and out[..., 0].max() <= 255 * 0.76


# --- "10" -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,resized,boxes",
    [
        # 64 / 0.875 = 73.14: shorter side 73. Order: TL, TR, BL, BR, centre.
        (LANDSCAPE, (97, 73), [(0, 0), (33, 0), (0, 9), (33, 9), (16, 4)]),
        (PORTRAIT, (73, 97), [(0, 0), (9, 0), (0, 33), (9, 33), (4, 16)]),
        (SQUARE, (73, 73), [(0, 0), (9, 0), (0, 9), (9, 9), (4, 4)]),
    ],
)
def test_ten_crops_geometry_and_order(size, resized, boxes):
    img = coord_image(*size)
    out = C.PROTOCOLS["10"](img, 64)
    pixels = np.asarray(img.resize(resized, RESAMPLE))
    for i, (x, y) in enumerate(boxes):
        assert np.array_equal(out[i], cut(pixels, x, y, 64)), i
        assert np.array_equal(out[5 + i], cut(pixels, x, y, 64)[:, ::-1]), i


def test_ten_crops_regions_by_colour():
    out = C.PROTOCOLS["10"](coord_image(*LANDSCAPE), 64)
    (r0, g0), (r1, g1), (r2, g2), (r3, g3), (r4, g4) = (mean_rg(c) for c in out[:5])
    assert r0 < r4 < r1 and r2 < r4 < r3
    assert g0 < g4 < g2 and g1 < g4 < g3
    for i in range(5):
        assert out[i][:, 0, 0].mean() < out[i][:, -1, 0].mean()
        assert out[5 + i][:, 0, 0].mean() > out[5 + i][:, -1, 0].mean()


def test_ten_crops_use_crop_fraction_for_the_scale():
    img = coord_image(*SQUARE)
    out = C.PROTOCOLS["10"](img, 64, 0.5)
    pixels = np.asarray(img.resize((128, 128), RESAMPLE))
    assert np.array_equal(out[3], cut(pixels, 64, 64, 64))


# --- "144" and "12" -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [LANDSCAPE, PORTRAIT, SQUARE, (200, 60), (33, 47)])
def test_144_matches_the_paper_description(size):
    img = coord_image(*size)
    assert np.array_equal(C.PROTOCOLS["144"](img, 64), reference_144(img, 64))


def index_144(scale: int, square: int, crop: int, mirrored: bool = False) -> int:
    return 72 * mirrored + 18 * scale + 6 * square + crop


def test_144_order_landscape_squares_go_left_to_right():
    out = C.PROTOCOLS["144"](coord_image(*LANDSCAPE), 64)
    for scale in range(4):
        for crop in range(6):
            r = [mean_rg(out[index_144(scale, sq, crop)])[0] for sq in range(3)]
            g = [mean_rg(out[index_144(scale, sq, crop)])[1] for sq in range(3)]
            assert r[0] < r[1] < r[2] and max(g) - min(g) < 1


def test_144_order_portrait_squares_go_top_to_bottom():
    out = C.PROTOCOLS["144"](coord_image(*PORTRAIT), 64)
    for scale in range(4):
        for crop in range(6):
            r = [mean_rg(out[index_144(scale, sq, crop)])[0] for sq in range(3)]
            g = [mean_rg(out[index_144(scale, sq, crop)])[1] for sq in range(3)]
            assert g[0] < g[1] < g[2] and max(r) - min(r) < 1


def test_144_square_image_repeats_its_one_square():
    out = C.PROTOCOLS["144"](coord_image(*SQUARE), 64)
    for scale in range(4):
        first = out[index_144(scale, 0, 0) : index_144(scale, 0, 6)]
        for square in (1, 2):
            assert np.array_equal(out[index_144(scale, square, 0) : index_144(scale, square, 6)], first)


def test_144_crops_within_a_square_and_mirrors():
    out = C.PROTOCOLS["144"](coord_image(*LANDSCAPE), 64)
    for scale in range(4):
        for square in range(3):
            (r0, g0), (r1, g1), (r2, g2), (r3, g3), (r4, g4), (r5, g5) = (
                mean_rg(out[index_144(scale, square, c)]) for c in range(6)
            )
            assert r0 < r4 < r1 and r2 < r4 < r3 and g0 < g4 < g2 and g1 < g4 < g3
            assert abs(r5 - r4) < 2 and abs(g5 - g4) < 2
    assert np.array_equal(out[72:], out[:72, :, ::-1])


def test_144_scales_grow_zoom():
    # The centre crop's spread of R narrows as the scale grows: a fixed 64 px window sees less.
    out = C.PROTOCOLS["144"](coord_image(*SQUARE), 64)
    spread = [np.ptp(out[index_144(scale, 1, 4)][..., 0].astype(int)) for scale in range(4)]
    assert spread == sorted(spread, reverse=True) and spread[0] > spread[-1]


@pytest.mark.parametrize("size", [LANDSCAPE, PORTRAIT, SQUARE, (500, 375)])
def test_12_is_the_centre_square_of_the_smallest_144_scale(size):
    img = coord_image(*size)
    twelve = C.PROTOCOLS["12"](img, 64)
    full = C.PROTOCOLS["144"](img, 64)
    assert np.array_equal(twelve[:6], full[index_144(0, 1, 0) : index_144(0, 1, 6)])
    assert np.array_equal(twelve[6:], full[index_144(0, 1, 0, True) : index_144(0, 1, 6, True)])


def test_corner_center_boxes_and_three_squares():
    assert C.corner_center_boxes(100, 80, 50) == [
        Box(0, 0, 50, 50),
        Box(50, 0, 50, 50),
        Box(0, 30, 50, 50),
        Box(50, 30, 50, 50),
        Box(25, 15, 50, 50),
    ]
    assert C.three_squares(97, 73) == [Box(0, 0, 73, 73), Box(12, 0, 73, 73), Box(24, 0, 73, 73)]
    assert C.three_squares(73, 97) == [Box(0, 0, 73, 73), Box(0, 12, 73, 73), Box(0, 24, 73, 73)]
    assert C.three_squares(73, 73) == [Box(0, 0, 73, 73)] * 3


# --- lookup and arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,fn",
    [
        ("1", C.one_crop),
        ("10", C.ten_crops),
        ("12", C.twelve_crops),
        ("144", C.googlenet_crops),
        (144, C.googlenet_crops),
        (" 10 ", C.ten_crops),
    ],
)
def test_protocol_lookup(name, fn):
    assert C.protocol(name) is fn


@pytest.mark.parametrize("name", ["5", "", "one", None, "1,10"])
def test_unknown_protocol_names_the_known_ones(name):
    with pytest.raises(UserError, match="known protocols: 1, 10, 12, 144"):
        C.protocol(name)


def test_protocol_table_is_the_four_named_protocols():
    assert list(C.PROTOCOLS) == ["1", "10", "12", "144"]


@pytest.mark.parametrize("name", ["1", "10", "12", "144"])
@pytest.mark.parametrize("resolution,fraction", [(0, 0.875), (32, 0.0), (32, 1.5)])
def test_protocols_reject_bad_arguments(name, resolution, fraction):
    with pytest.raises(UserError):
        C.PROTOCOLS[name](coord_image(*SQUARE), resolution, fraction)
