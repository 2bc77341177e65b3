"""Per-split batch transforms for Ray Data `map_batches(fn, batch_format="numpy")`.

Built by keyword-only presets (`train_transform`, `eval_transform`, and `train_crop_transform`
for `data.decode_on: gpu`); each returns a small picklable callable object, so Ray can ship it to
every task.

Input batch (a shard's columns as `read_webdataset(decoder=None)` yields them):
    "jpg":     object array of JPEG bytes
    "cls":     object array of ASCII digits (b"7") or an integer array
    "__key__": optional; names the sample in errors
Output batch of `train_transform` and `eval_transform` (decoded on CPU):
    "image": uint8 (N, R, R, 3), RGB, HWC
    "label": int64 (N,)
Normalisation to [-1, 1] is left to the training device: uint8 moves a quarter of float32's
bytes through Ray's object store.

Output batch of `train_crop_transform` (crop drawn on CPU, decoded on the training device by
`trainers.decode`, because CPU decoding is the bound on GPU clusters):
    "jpg":   the input's object array of JPEG bytes, unchanged
    "box":   int32 (N, 4), the crop as (left, top, width, height) in full-resolution pixels
    "flip":  bool (N,), mirror left-right after the resize
    "label": int64 (N,)
For the same seed and batch its boxes and flips are the ones `train_transform(color=False)`
draws: both share the generator (`SeededCrops.rng_for`) and the per-sample draw order
(`draw_crop`). Only the JPEG header is read here (Pillow's `Image.open(...).size`), so data
that is corrupt past the header is found on the device.

A sample that cannot be decoded (for the crop transform: whose header cannot be read, or that is
not a JPEG), or whose label is not an integer, raises UserError naming the sample; nothing is
skipped silently.
"""

from __future__ import annotations

import functools
import io
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipelines.augment import (
    Box,
    center_crop_box,
    check_fraction,
    check_range,
    check_size,
    color_distort,
    decode_cropped,
    inception_crop_box,
)
from pipelines.errors import UserError


def sample_name(batch: dict, index: int) -> str:
    """How errors name sample `index` of `batch`: its key where the batch has one."""
    keys = batch.get("__key__")
    if keys is None:
        return f"sample {index} of the batch (no __key__ column)"
    key = keys[index]
    if isinstance(key, (bytes, bytearray)):
        key = key.decode("utf-8", "replace")
    return f"sample {str(key)!r}"


def parse_labels(batch: dict) -> np.ndarray:
    """The "cls" column as int64; ASCII digits (bytes or str) and integers are accepted."""
    cls = np.asarray(batch["cls"])
    if cls.dtype.kind in "iu":
        labels = cls.astype(np.int64)
    else:
        labels = np.empty(len(cls), dtype=np.int64)
        for i, value in enumerate(cls):
            try:
                if isinstance(value, (float, np.floating)):
                    raise TypeError
                labels[i] = int(value)
            except (TypeError, ValueError, OverflowError):
                raise UserError(
                    f"{sample_name(batch, i)}: label {value!r} is not an integer class index"
                ) from None
    negative = np.flatnonzero(labels < 0)
    if negative.size:
        i = int(negative[0])
        raise UserError(f"{sample_name(batch, i)}: label {labels[i]} is negative")
    return labels


def batch_digest(jpegs) -> int:
    """CRC-32 over the batch's JPEG bytes: tells batches apart when seeding their RNG."""
    crc = 0
    for data in jpegs:
        crc = zlib.crc32(data, crc)
    return crc


def _decode_all(batch: dict, resolution: int, per_sample) -> np.ndarray:
    jpegs = batch["jpg"]
    images = np.empty((len(jpegs), resolution, resolution, 3), dtype=np.uint8)
    for i, data in enumerate(jpegs):
        try:
            img = per_sample(data)
        except UserError as err:
            raise UserError(f"{sample_name(batch, i)}: {err}") from err
        if not isinstance(img, np.ndarray) or img.flags.c_contiguous or img.shape != images.shape[1:]:
            images[i] = img
        else:
            # A mirrored view (img[:, ::-1]): NumPy copies it with a 3-byte inner loop, one pixel
            # at a time (0.6-1.2 ms at 299x299 here); one channel at a time, the inner loop runs
            # along a whole row (0.1 ms). Same bytes either way.
            for c in range(img.shape[-1]):
                images[i, :, :, c] = img[:, :, c]
    return images


# What Pillow raises on bytes it cannot open; as pipelines.augment.decode_cropped catches.
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def jpeg_size(jpeg_bytes) -> tuple[int, int]:
    """(width, height) in pixels from the JPEG header, without decoding; UserError if unreadable or not a JPEG."""
    try:
        with Image.open(io.BytesIO(jpeg_bytes)) as img:
            fmt, size = img.format, img.size
    except _UNREADABLE as err:
        raise UserError(f"cannot read image header: {type(err).__name__}: {err}") from err
    if fmt != "JPEG":
        # nvJPEG, the device decoder, reads JPEG only; Pillow would open the rest.
        raise UserError(f"is a {fmt} image, not a JPEG: data.decode_on: gpu decodes JPEG only")
    return size


def draw_crop(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    area: tuple[float, float],
    ratio: tuple[float, float],
    flip: bool,
) -> tuple[Box, bool]:
    """One sample's random geometry for a `width` x `height` image (pixels): (crop box, mirror it).

    The draw order (inception_crop_box's draws, then one `rng.random()` for the flip only when
    `flip` is on) is part of the contract: CPU and device decoding give the same crops for a
    seed only while every transform draws through here.
    """
    box = inception_crop_box(rng, width, height, area=area, ratio=ratio)
    return box, bool(flip and rng.random() < 0.5)


@dataclass(kw_only=True)
class SeededCrops:
    """The random crop and flip shared by TrainTransform and CropTransform: settings, generator, draws."""

    resolution: int
    area: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    seed: int | None
    calls: int = field(default=0, init=False, repr=False)

    def rng_for(self, batch: dict) -> np.random.Generator:
        """The generator for this call; advances the call counter.

        seed None: fresh OS entropy on every call. seed given: a function of (seed, calls so far
        on this object, the batch's bytes). Ray unpickles a fresh copy of the transform for
        each task, so its counter restarts there: vary the seed per epoch (seed + epoch) for
        epochs to differ when they see the same batches.
        """
        calls = self.calls
        self.calls += 1
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, calls, batch_digest(batch["jpg"])])

    def draw(self, rng: np.random.Generator, width: int, height: int) -> tuple[Box, bool]:
        """`draw_crop` with this transform's settings."""
        return draw_crop(rng, width, height, area=self.area, ratio=self.ratio, flip=self.flip)


@dataclass(kw_only=True)
class TrainTransform(SeededCrops):
    """Inception training augmentation; build it with `train_transform`."""

    color: bool

    def augment(self, jpeg, rng: np.random.Generator) -> np.ndarray:
        """One sample: random crop, resize, flip, colour; uint8 (R, R, 3)."""
        # decode_cropped hands box_fn the full-resolution size it read; the flip is drawn in the
        # same call so the draws stay in draw_crop's order, the order CropTransform replays.
        flipped = []

        def box_fn(width: int, height: int) -> Box:
            box, mirror = self.draw(rng, width, height)
            flipped.append(mirror)
            return box

        img = decode_cropped(jpeg, box_fn, self.resolution)
        if flipped[0]:
            img = img[:, ::-1]
        if self.color:
            img = color_distort(img, rng)
        return img

    def __call__(self, batch: dict) -> dict:
        rng = self.rng_for(batch)
        labels = parse_labels(batch)
        images = _decode_all(batch, self.resolution, functools.partial(self.augment, rng=rng))
        return {"image": images, "label": labels}


@dataclass(kw_only=True)
class CropTransform(SeededCrops):
    """TrainTransform's crop and flip draws, no decoding; build it with `train_crop_transform`.

    `resolution` (pixels) is not used here: it names the size the device resizes crops to.
    """

    def __call__(self, batch: dict) -> dict:
        rng = self.rng_for(batch)
        labels = parse_labels(batch)
        jpegs = batch["jpg"]
        boxes = np.empty((len(jpegs), 4), dtype=np.int32)
        flips = np.empty(len(jpegs), dtype=bool)
        for i, data in enumerate(jpegs):
            try:
                width, height = jpeg_size(data)
            except UserError as err:
                raise UserError(f"{sample_name(batch, i)}: {err}") from err
            box, flips[i] = self.draw(rng, width, height)
            boxes[i] = (box.left, box.top, box.width, box.height)
        return {"jpg": jpegs, "box": boxes, "flip": flips, "label": labels}


@dataclass(frozen=True, kw_only=True)
class EvalTransform:
    """Central crop and resize, no randomness; build it with `eval_transform`."""

    resolution: int
    crop_fraction: float

    def prepare(self, jpeg) -> np.ndarray:
        """One sample: the central crop_fraction of each side, resized; uint8 (R, R, 3)."""
        box_fn = functools.partial(center_crop_box, crop_fraction=self.crop_fraction)
        return decode_cropped(jpeg, box_fn, self.resolution)

    def __call__(self, batch: dict) -> dict:
        labels = parse_labels(batch)
        images = _decode_all(batch, self.resolution, self.prepare)
        return {"image": images, "label": labels}


def train_transform(
    *,
    resolution: int,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    color: bool = True,
    seed: int | None = None,
) -> TrainTransform:
    """Training preset: Inception crop (area fraction, aspect w/h), resize to resolution, flip, TF colour.

    area defaults to torchvision's 8%-100%; TF's Inception uses (0.05, 1.0).
    """
    return TrainTransform(**_crop_settings(resolution, area, ratio, flip, seed), color=bool(color))


def train_crop_transform(
    *,
    resolution: int,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    seed: int | None = None,
) -> CropTransform:
    """`train_transform(color=False)`'s crop and flip, drawn on CPU and shipped with the JPEG bytes.

    For `data.decode_on: gpu`: `trainers.decode.decode_batch` decodes, crops, resizes to
    `resolution` and flips on the training device. Arguments as `train_transform`'s.
    """
    return CropTransform(**_crop_settings(resolution, area, ratio, flip, seed))


def _crop_settings(resolution, area, ratio, flip, seed) -> dict:
    """The SeededCrops fields, validated; UserError names the bad argument."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise UserError(f"seed must be an integer or None, got {seed!r}")
    if seed is not None and seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")
    return {
        "resolution": check_size("resolution", resolution),
        "area": check_range("area", area, low=0.0, high=1.0),
        "ratio": check_range("ratio", ratio, low=0.0),
        "flip": bool(flip),
        "seed": None if seed is None else int(seed),
    }


def eval_transform(*, resolution: int, crop_fraction: float = 0.875) -> EvalTransform:
    """Evaluation preset: TF's central crop (crop_fraction of each side), resized to a square."""
    return EvalTransform(
        resolution=check_size("resolution", resolution),
        crop_fraction=check_fraction("crop_fraction", crop_fraction),
    )
