"""Per-split batch transforms for Ray Data `map_batches(fn, batch_format="numpy")`.

Built by keyword-only presets, one per split (`train_transform`, `eval_transform`); each returns
a small picklable callable object, so Ray can ship it to every task.

Input batch (a shard's columns as `read_webdataset(decoder=None)` yields them):
    "jpg":     object array of JPEG bytes
    "cls":     object array of ASCII digits (b"7") or an integer array
    "__key__": optional; names the sample in errors
Output batch:
    "image": uint8 (N, R, R, 3), RGB, HWC
    "label": int64 (N,)
Normalisation to [-1, 1] is left to the training device: uint8 moves a quarter of float32's
bytes through Ray's object store.

A sample that cannot be decoded, or whose label is not an integer, raises UserError naming the
sample; nothing is skipped silently.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field

import numpy as np

from pipelines.augment import (
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
            images[i] = per_sample(data)
        except UserError as err:
            raise UserError(f"{sample_name(batch, i)}: {err}") from err
    return images


@dataclass(kw_only=True)
class TrainTransform:
    """Inception training augmentation; build it with `train_transform`."""

    resolution: int
    area: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    color: bool
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

    def augment(self, jpeg, rng: np.random.Generator) -> np.ndarray:
        """One sample: random crop, resize, flip, colour; uint8 (R, R, 3)."""
        box_fn = functools.partial(inception_crop_box, rng, area=self.area, ratio=self.ratio)
        img = decode_cropped(jpeg, box_fn, self.resolution)
        if self.flip and rng.random() < 0.5:
            img = img[:, ::-1]
        if self.color:
            img = color_distort(img, rng)
        return img

    def __call__(self, batch: dict) -> dict:
        rng = self.rng_for(batch)
        labels = parse_labels(batch)
        images = _decode_all(batch, self.resolution, functools.partial(self.augment, rng=rng))
        return {"image": images, "label": labels}


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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise UserError(f"seed must be an integer or None, got {seed!r}")
    if seed is not None and seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")
    return TrainTransform(
        resolution=check_size("resolution", resolution),
        area=check_range("area", area, low=0.0, high=1.0),
        ratio=check_range("ratio", ratio, low=0.0),
        flip=bool(flip),
        color=bool(color),
        seed=None if seed is None else int(seed),
    )


def eval_transform(*, resolution: int, crop_fraction: float = 0.875) -> EvalTransform:
    """Evaluation preset: TF's central crop (crop_fraction of each side), resized to a square."""
    return EvalTransform(
        resolution=check_size("resolution", resolution),
        crop_fraction=check_fraction("crop_fraction", crop_fraction),
    )
