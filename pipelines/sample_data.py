"""`incept sample-data`: a small labelled data set in the ILSVRC-2012 layout, made here.

No data set can be downloaded, so tests and the demo use this. `digits` renders scikit-learn's
bundled 8x8 handwritten digits (a real, learnable data set) large, on varied backgrounds, one
class per digit; `synthetic` draws class-distinct gratings. Sizes and aspect ratios are
ImageNet-like (sides about 150-800 px, typically 500x375) and the files are real JPEG encodings.
Training and validation images come from disjoint digit samples, so validation accuracy is honest.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.errors import UserError
from pipelines.imagenet import SYNSET_MAPPING

SOURCES = ("digits", "synthetic")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# (width, height) shapes in roughly the proportions ImageNet has: mostly 4:3 landscape.
SHAPES = ((500, 375), (500, 333), (375, 500), (500, 500), (640, 480), (800, 600), (333, 500), (300, 225), (160, 200), (800, 450))


@dataclass(frozen=True)
class SampleSet:
    root: str
    classes: list[str]
    train_images: int
    val_images: int
    quirks: list[str]


def wnid(label: int) -> str:
    return f"n{label:08d}"


def _canvas(rng: np.random.Generator) -> np.ndarray:
    """A float RGB background in [0, 1]: a colour gradient with a noise texture."""
    w, h = SHAPES[rng.integers(len(SHAPES))]
    scale = rng.uniform(0.8, 1.2)
    w, h = max(150, min(800, int(w * scale))), max(150, min(800, int(h * scale)))
    a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    image = a * (1 - t) + b * t
    image = np.broadcast_to(image, (h, w, 3)) + rng.normal(0, 0.06, (h, w, 3)).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def _render_digit(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = _canvas(rng)
    h, w, _ = image.shape
    # Large and near the centre, as an ImageNet object usually is: the central crop keeps it whole
    # and a quarter-width network learns the ten classes in a few hundred steps.
    side = int(min(h, w) * rng.uniform(0.65, 0.8))
    mask = Image.fromarray((digit * (255 / 16)).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    mask = np.clip(np.asarray(mask, dtype=np.float32)[:, :, None] / 255, 0, 1)
    top = (h - side) // 2 + rng.integers(-(h - side) // 8, (h - side) // 8 + 1)
    left = (w - side) // 2 + rng.integers(-(w - side) // 8, (w - side) // 8 + 1)
    region = image[top : top + side, left : left + side]
    background = region.mean(axis=(0, 1))
    # Dark ink on a light background, light ink on a dark one: the shape, not a colour, is the class.
    ink = np.full(3, rng.uniform(0, 0.15) if background.mean() > 0.5 else rng.uniform(0.85, 1), dtype=np.float32)
    image[top : top + side, left : left + side] = region * (1 - mask) + ink * mask
    return image


def _render_pattern(label: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Class k: a grating at angle k*180/C with a hue of its own; phase, size and noise vary."""
    image = _canvas(rng)
    h, w, _ = image.shape
    angle = np.pi * label / num_classes
    period = rng.uniform(18, 30)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    hue = label / num_classes
    colour = 0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0, 1 / 3, 2 / 3], dtype=np.float32)))
    return np.clip(0.35 * image + 0.65 * wave[:, :, None] * colour, 0, 1)


def _jpeg(image: np.ndarray, rng: np.random.Generator, *, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    pil = Image.fromarray((image * 255).round().astype(np.uint8))
    if mode != "RGB":
        pil = pil.convert(mode)
    out = io.BytesIO()
    if fmt == "JPEG":
        pil.save(out, format="JPEG", quality=int(rng.integers(80, 96)), progressive=bool(rng.random() < 0.2))
    else:
        pil.save(out, format=fmt)
    return out.getvalue()


def _digit_pools(num_classes: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per class, disjoint digit samples for training (80%) and validation (20%)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in range(num_classes):
        images = digits.images[digits.target == label]
        images = images[rng.permutation(len(images))]
        cut = int(len(images) * 0.8)
        train.append(images[:cut])
        val.append(images[cut:])
    return train, val


def make_sample_set(
    out: str | os.PathLike,
    *,
    classes: int = 10,
    train_per_class: int = 50,
    val_per_class: int = 10,
    seed: int = 0,
    source: str = "digits",
    quirks: bool = False,
) -> SampleSet:
    if source not in SOURCES:
        raise UserError(f"unknown --source {source!r}: use one of {', '.join(SOURCES)}")
    if source == "digits" and not 1 <= classes <= 10:
        raise UserError(f"--classes must be 1 to 10 for --source digits (there are 10 digits), got {classes}")
    if classes < 1 or train_per_class < 1 or val_per_class < 0:
        raise UserError("--classes and --train-per-class must be at least 1, --val-per-class at least 0")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} exists and is not empty: choose a new folder for the sample data")

    rng = np.random.default_rng(seed)
    pools = _digit_pools(classes, seed) if source == "digits" else None

    def render(label: int, split: int, n: int) -> np.ndarray:
        if pools is None:
            return _render_pattern(label, classes, rng)
        pool = pools[split][label]
        return _render_digit(pool[n % len(pool)], rng)

    wnids = [wnid(c) for c in range(classes)]
    for c in wnids:
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        if val_per_class:
            (root / "val" / c).mkdir(parents=True, exist_ok=True)
    words = [f"digit {DIGIT_WORDS[c]}" if source == "digits" else f"pattern {c}" for c in range(classes)]
    (root / SYNSET_MAPPING).write_text("".join(f"{w} {t}\n" for w, t in zip(wnids, words)), encoding="utf-8")

    for label, c in enumerate(wnids):
        for n in range(train_per_class):
            (root / "train" / c / f"{c}_{n + 1}.JPEG").write_bytes(_jpeg(render(label, 0, n), rng))
    val_labels = rng.permutation(np.repeat(np.arange(classes), val_per_class))
    seen = np.zeros(classes, dtype=int)
    for i, label in enumerate(val_labels):
        image = render(int(label), 1, int(seen[label]))
        seen[label] += 1
        (root / "val" / wnids[label] / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(_jpeg(image, rng))

    quirk_files = []
    if quirks:
        # The oddities of the real ImageNet training set: a CMYK JPEG, a greyscale JPEG and a PNG
        # named .JPEG; valid images of their class, which sharding must convert to RGB JPEG.
        c = wnids[0]
        for k, (mode, fmt) in enumerate((("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"))):
            path = root / "train" / c / f"{c}_{train_per_class + k + 1}.JPEG"
            path.write_bytes(_jpeg(render(0, 0, k), rng, mode=mode, fmt=fmt))
            quirk_files.append(path.relative_to(root).as_posix())

    return SampleSet(
        root=str(root),
        classes=wnids,
        train_images=classes * train_per_class + len(quirk_files),
        val_images=classes * val_per_class,
        quirks=quirk_files,
    )
