import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines.jpeg import BadImage, prepare

pytestmark = pytest.mark.unit


def encode(image, fmt="JPEG", **kw):
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def rgb(w=64, h=48):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def decoded(data):
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("progressive", [False, True])
def test_rgb_jpeg_is_kept_byte_for_byte(progressive):
    data = encode(rgb(), progressive=progressive)
    out = prepare(data)
    assert out.jpeg == data and not out.converted and (out.width, out.height) == (64, 48)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(rgb().convert("CMYK")),
        lambda: encode(rgb().convert("L")),
        lambda: encode(rgb(), fmt="PNG"),
        lambda: encode(rgb().convert("P"), fmt="PNG"),
        lambda: encode(rgb().convert("RGBA"), fmt="PNG"),
        lambda: encode(Image.new("I;16", (10, 10), 40000), fmt="PNG"),
    ],
    ids=["cmyk-jpeg", "grey-jpeg", "png", "palette-png", "rgba-png", "16bit-png"],
)
def test_other_images_become_rgb_jpeg(make):
    out = prepare(make())
    image = decoded(out.jpeg)
    assert out.converted and image.format == "JPEG" and image.mode == "RGB"
    assert image.size == (out.width, out.height)


def test_sixteen_bit_grey_keeps_its_brightness():
    out = prepare(encode(Image.new("I;16", (8, 8), 40000), fmt="PNG"))
    assert abs(np.asarray(decoded(out.jpeg)).mean() - 40000 / 256) < 2


def test_oversize_images_are_downscaled_to_max_side():
    out = prepare(encode(rgb(300, 120)), max_side=100)
    assert out.converted and (out.width, out.height) == (100, 40)
    assert prepare(encode(rgb(100, 40)), max_side=100).converted is False


def truncated():
    data = encode(rgb(256, 256))
    return data[: len(data) // 2]


def bomb_png():
    """A PNG header claiming 20000 x 20000 pixels: over twice Pillow's default limit."""
    data = bytearray(encode(Image.new("L", (1, 1)), fmt="PNG"))
    ihdr = struct.pack(">II", 20000, 20000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"just some text, not an image\n", "not an image"),
        (truncated(), "corrupt or truncated"),
        (bomb_png(), "decompression-bomb"),
    ],
    ids=["empty", "text", "truncated", "bomb"],
)
def test_bad_input_gives_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        prepare(data)
