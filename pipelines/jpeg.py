"""Turning one source file into the RGB JPEG a shard holds, or the reason it cannot be.

Every image is fully decoded once: only a full decode finds truncated or corrupt data. Bytes that
are already an RGB JPEG (baseline or progressive) within `max_side` are kept untouched, so the
shard holds exactly what the photographer's camera wrote; anything else (CMYK, greyscale, palette,
a PNG named .JPEG, an oversize image) is converted to RGB JPEG.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

DEFAULT_QUALITY = 95


class BadImage(Exception):
    """The file cannot go into a shard; the message is the reason recorded in the manifest."""


@dataclass(frozen=True)
class Prepared:
    jpeg: bytes
    width: int
    height: int
    converted: bool  # False when the source bytes were kept as they were


def prepare(data: bytes, *, max_side: int | None = None, quality: int = DEFAULT_QUALITY) -> Prepared:
    """Validate `data` by decoding it fully and return RGB JPEG bytes; raises BadImage."""
    if not data:
        raise BadImage("empty file")
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its pixel limit; either way it is a bomb to us.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage(f"over Pillow's decompression-bomb limit: {err}") from None
        except Image.UnidentifiedImageError:
            raise BadImage("not an image Pillow can identify") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise BadImage(f"corrupt or truncated image: {err}") from None

    too_big = max_side is not None and max(image.size) > max_side
    if image.format == "JPEG" and image.mode == "RGB" and not too_big:
        return Prepared(data, image.width, image.height, converted=False)

    try:
        rgb = _to_rgb(image)
    except (OSError, ValueError) as err:
        raise BadImage(f"cannot convert {image.mode} {image.format} to RGB: {err}") from None
    if too_big:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=quality, optimize=False)
    return Prepared(out.getvalue(), rgb.width, rgb.height, converted=True)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels over white, as a browser shows them, not over black.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: keep the top 8 bits rather than clipping at 255.
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")
