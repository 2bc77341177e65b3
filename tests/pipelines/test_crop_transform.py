"""pipelines.transforms.train_crop_transform: the crops of train_transform(color=False), not decoded."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from pipelines import augment as A
from pipelines.errors import UserError
from pipelines.transforms import CropTransform, train_crop_transform, train_transform

RESOLUTION = 64


def textured_jpeg(width: int, height: int, seed: int, *, fmt: str = "JPEG") -> bytes:
    """Colour ramps plus 4x4-pixel noise blocks: every crop position and size gives different pixels."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    base = np.stack([x, y, np.full_like(x, 128)], -1)
    noise = rng.normal(0, 30, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:height, :width]
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buf, fmt, quality=90)
    return buf.getvalue()


def make_batch(n: int = 8, *, keys: bool = True) -> dict:
    """Alternately 120x90 and 90x120: small enough that no crop is decoded at a reduced DCT scale."""
    jpgs = [textured_jpeg(*((120, 90) if i % 2 == 0 else (90, 120)), seed=i) for i in range(n)]
    batch = {
        "jpg": np.array(jpgs, dtype=object),
        "cls": np.array([str(i % 5).encode() for i in range(n)], dtype=object),
    }
    if keys:
        batch["__key__"] = np.array([f"n0000{i}_{i:04d}" for i in range(n)], dtype=object)
    return batch


def replay(jpeg_bytes: bytes, box, flip: bool) -> np.ndarray:
    """What TrainTransform(color=False) makes of a sample with this crop and flip, at draft scale 1."""
    box = A.Box(*(int(v) for v in box))
    assert A.draft_scale(box, RESOLUTION) == 1, "the replay is exact only without DCT scaling"
    img = A.crop_resize(Image.open(io.BytesIO(jpeg_bytes)), box, RESOLUTION)
    return img[:, ::-1] if flip else img


@pytest.mark.unit
@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_crops_and_flips_are_train_transforms_draws(seed, flip):
    batch = make_batch(8)
    cpu = train_transform(resolution=RESOLUTION, color=False, flip=flip, seed=seed)
    crop = train_crop_transform(resolution=RESOLUTION, flip=flip, seed=seed)
    # Two calls each: the second checks that the call counter moves both generators alike.
    for _ in range(2):
        images = cpu(batch)["image"]
        out = crop(batch)
        for i, jpg in enumerate(batch["jpg"]):
            assert np.array_equal(replay(jpg, out["box"][i], out["flip"][i]), images[i]), f"sample {i}"
        if not flip:
            assert not out["flip"].any()
    assert crop.calls == cpu.calls == 2


@pytest.mark.unit
def test_flips_and_boxes_vary():
    flips, lefts = [], []
    for seed in range(4):
        out = train_crop_transform(resolution=RESOLUTION, seed=seed)(make_batch(8))
        flips += out["flip"].tolist()
        lefts += out["box"][:, 0].tolist()
    assert 0.2 < np.mean(flips) < 0.8
    assert len(set(lefts)) > 8


@pytest.mark.unit
def test_output_columns():
    batch = make_batch(5)
    out = train_crop_transform(resolution=RESOLUTION, seed=3)(batch)
    assert set(out) == {"jpg", "box", "flip", "label"}
    assert out["jpg"] is batch["jpg"]
    assert out["box"].shape == (5, 4) and out["box"].dtype == np.int32
    assert out["flip"].shape == (5,) and out["flip"].dtype == np.bool_
    assert out["label"].dtype == np.int64 and out["label"].tolist() == [0, 1, 2, 3, 4]
    for (left, top, width, height), jpg in zip(out["box"], batch["jpg"]):
        img_w, img_h = Image.open(io.BytesIO(jpg)).size
        assert 0 <= left and 0 <= top and 0 < width and 0 < height
        assert left + width <= img_w and top + height <= img_h


@pytest.mark.unit
def test_empty_batch():
    empty = {"jpg": np.array([], dtype=object), "cls": np.array([], dtype=object)}
    out = train_crop_transform(resolution=32, seed=1)(empty)
    assert out["box"].shape == (0, 4) and out["flip"].shape == (0,) and out["label"].shape == (0,)


@pytest.mark.unit
def test_same_seed_fresh_objects_agree_and_unseeded_calls_differ():
    batch = make_batch(6)
    a = train_crop_transform(resolution=RESOLUTION, seed=11)(batch)
    b = train_crop_transform(resolution=RESOLUTION, seed=11)(batch)
    assert np.array_equal(a["box"], b["box"]) and np.array_equal(a["flip"], b["flip"])
    t = train_crop_transform(resolution=RESOLUTION)
    assert not np.array_equal(t(batch)["box"], t(batch)["box"])


@pytest.mark.unit
def test_pickled_transform_reproduces_the_original():
    batch = make_batch(4)
    t = train_crop_transform(resolution=RESOLUTION, seed=9)
    copy = pickle.loads(pickle.dumps(t))
    assert isinstance(copy, CropTransform) and copy == t
    a, b = t(batch), copy(batch)
    assert np.array_equal(a["box"], b["box"]) and np.array_equal(a["flip"], b["flip"])


# --- errors name the sample ------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("corrupt", [b"", b"garbage", "truncated"])
def test_unreadable_header_raises_with_its_key(corrupt):
    batch = make_batch(4)
    # 300 bytes stop inside the Huffman tables, before the frame header is complete.
    batch["jpg"][2] = batch["jpg"][2][:300] if corrupt == "truncated" else corrupt
    with pytest.raises(UserError, match=r"sample 'n00002_0002': cannot read image header"):
        train_crop_transform(resolution=RESOLUTION, seed=0)(batch)


@pytest.mark.unit
def test_unreadable_header_without_keys_names_its_position():
    batch = make_batch(3, keys=False)
    batch["jpg"][1] = b"garbage"
    with pytest.raises(UserError, match=r"sample 1 of the batch"):
        train_crop_transform(resolution=RESOLUTION, seed=0)(batch)


@pytest.mark.unit
def test_png_is_refused_because_the_device_decodes_jpeg_only():
    batch = make_batch(3)
    batch["jpg"][1] = textured_jpeg(40, 30, seed=0, fmt="PNG")
    with pytest.raises(UserError, match=r"sample 'n00001_0001': is a PNG image, not a JPEG"):
        train_crop_transform(resolution=RESOLUTION, seed=0)(batch)


@pytest.mark.unit
def test_bad_label_raises_with_its_key():
    batch = make_batch(3)
    batch["cls"][1] = b"cat"
    with pytest.raises(UserError, match="n00001_0001"):
        train_crop_transform(resolution=RESOLUTION, seed=0)(batch)


# --- preset ----------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs",
    [
        {"resolution": 0},
        {"resolution": 29.5},
        {"resolution": True},
        {"resolution": 32, "area": (0.5, 0.1)},
        {"resolution": 32, "area": (0.0, 1.0)},
        {"resolution": 32, "ratio": (0, 1)},
        {"resolution": 32, "seed": "7"},
        {"resolution": 32, "seed": -1},
        {"resolution": 32, "seed": 1.5},
        {"resolution": 32, "seed": True},
    ],
)
def test_preset_rejects_bad_arguments(kwargs):
    with pytest.raises(UserError):
        train_crop_transform(**kwargs)


@pytest.mark.unit
def test_preset_is_keyword_only_and_keeps_its_settings():
    with pytest.raises(TypeError):
        train_crop_transform(299)  # type: ignore[misc]
    t = train_crop_transform(resolution=299, area=(0.05, 1), flip=0, seed=np.int64(4))
    assert (t.resolution, t.area, t.ratio, t.flip, t.seed) == (299, (0.05, 1.0), (0.75, 4 / 3), False, 4)
    assert "299" in repr(t) and "calls" not in repr(t)
