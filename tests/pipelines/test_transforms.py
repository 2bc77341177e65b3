"""The map_batches callables of pipelines.transforms, on batches of generated JPEGs."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from pipelines import augment as A
from pipelines import crops
from pipelines.errors import UserError
from pipelines.transforms import EvalTransform, TrainTransform, eval_transform, train_transform

pytestmark = pytest.mark.unit


def coord_image(width: int, height: int) -> np.ndarray:
    """R rises with x, G with y, B constant."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.rint(np.stack([x, y, np.full_like(x, 128)], -1)).astype(np.uint8)


def jpeg(arr: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_batch(n: int = 6, *, keys: bool = True, labels=None, size=(96, 72)) -> dict:
    rng = np.random.default_rng(n)
    jpgs = []
    for i in range(n):
        w, h = size if i % 2 == 0 else size[::-1]
        arr = coord_image(w, h)
        arr[..., 2] = rng.integers(0, 256)
        jpgs.append(jpeg(arr))
    batch = {
        "jpg": np.array(jpgs, dtype=object),
        "cls": np.array([str(i % 3).encode() for i in range(n)] if labels is None else labels, dtype=object),
    }
    if keys:
        batch["__key__"] = np.array([f"n0000{i}_{i:04d}" for i in range(n)], dtype=object)
    return batch


# --- output format ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda: train_transform(resolution=32, seed=0), lambda: eval_transform(resolution=32)],
    ids=["train", "eval"],
)
def test_output_shapes_dtypes_and_labels(make):
    out = make()(make_batch(5))
    assert set(out) == {"image", "label"}
    assert out["image"].shape == (5, 32, 32, 3) and out["image"].dtype == np.uint8
    assert out["label"].dtype == np.int64 and out["label"].tolist() == [0, 1, 2, 0, 1]


@pytest.mark.parametrize(
    "labels",
    [
        [b"7", b"0", b"999"],
        ["7", "0", "999"],
        [7, 0, 999],
        np.array([7, 0, 999], dtype=np.int32),
        np.array([7, 0, 999], dtype=np.uint16),
        np.array([b"7", b"0", b"999"]),
        [np.int64(7), b" 0\n", "999"],
    ],
)
def test_labels_in_every_accepted_form(labels):
    batch = make_batch(3)
    batch["cls"] = labels if isinstance(labels, np.ndarray) else np.array(labels, dtype=object)
    out = eval_transform(resolution=16)(batch)
    assert out["label"].dtype == np.int64 and out["label"].tolist() == [7, 0, 999]


@pytest.mark.parametrize("bad", [b"cat", "", None, 1.5, b"-3", -3])
def test_bad_label_raises_with_the_key(bad):
    batch = make_batch(3)
    cls = list(batch["cls"])
    cls[1] = bad
    batch["cls"] = np.array(cls, dtype=object)
    with pytest.raises(UserError, match="n00001_0001"):
        train_transform(resolution=16, seed=0)(batch)


@pytest.mark.parametrize(
    "make",
    [lambda: train_transform(resolution=24, seed=1), lambda: eval_transform(resolution=24)],
    ids=["train", "eval"],
)
def test_empty_batch(make):
    out = make()({"jpg": np.array([], dtype=object), "cls": np.array([], dtype=object)})
    assert out["image"].shape == (0, 24, 24, 3) and out["label"].shape == (0,)


# --- errors name the sample ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [lambda: train_transform(resolution=16, seed=0), lambda: eval_transform(resolution=16)],
    ids=["train", "eval"],
)
@pytest.mark.parametrize("corrupt", [b"", b"garbage", "truncated"])
def test_corrupt_image_raises_with_its_key(make, corrupt):
    batch = make_batch(4)
    jpgs = list(batch["jpg"])
    jpgs[2] = jpgs[2][:300] if corrupt == "truncated" else corrupt
    batch["jpg"] = np.array(jpgs, dtype=object)
    with pytest.raises(UserError, match=r"sample 'n00002_0002': cannot decode image"):
        make()(batch)


def test_corrupt_image_without_keys_names_its_position():
    batch = make_batch(3, keys=False)
    batch["jpg"][1] = b"garbage"
    with pytest.raises(UserError, match=r"sample 1 of the batch"):
        train_transform(resolution=16, seed=0)(batch)


def test_bytes_keys_are_decoded_in_errors():
    batch = make_batch(2)
    batch["__key__"] = np.array([b"k0", b"k1"], dtype=object)
    batch["jpg"][1] = b"garbage"
    with pytest.raises(UserError, match=r"sample 'k1'"):
        eval_transform(resolution=16)(batch)


# --- randomness ------------------------------------------------------------------------------


def test_same_seed_fresh_objects_give_identical_output():
    batch = make_batch(6)
    a = train_transform(resolution=40, seed=123)(batch)
    b = train_transform(resolution=40, seed=123)(batch)
    assert np.array_equal(a["image"], b["image"])


def test_successive_calls_and_seeds_differ():
    batch = make_batch(6)
    t = train_transform(resolution=40, seed=123)
    first, second = t(batch)["image"], t(batch)["image"]
    assert not np.array_equal(first, second)
    other = train_transform(resolution=40, seed=124)(batch)["image"]
    assert not np.array_equal(first, other)


def test_unseeded_calls_differ():
    batch = make_batch(6)
    t = train_transform(resolution=40)
    assert not np.array_equal(t(batch)["image"], t(batch)["image"])


def test_different_batches_get_different_streams_at_the_same_call_count():
    # Ray gives each task a fresh copy whose counter starts at 0: the batch bytes must still
    # set the streams apart. Same images, one pixel changed in the last: first crops differ.
    batch = make_batch(4)
    other = make_batch(4)
    arr = coord_image(72, 96)
    arr[0, 0] = 0
    other["jpg"][3] = jpeg(arr)
    t1, t2 = train_transform(resolution=40, seed=5), train_transform(resolution=40, seed=5)
    assert not np.array_equal(t1(batch)["image"][0], t2(other)["image"][0])


def test_pickled_transform_reproduces_the_original():
    batch = make_batch(4)
    t = train_transform(resolution=32, seed=9)
    copy = pickle.loads(pickle.dumps(t))
    assert isinstance(copy, TrainTransform) and copy == t
    assert np.array_equal(t(batch)["image"], copy(batch)["image"])
    e = eval_transform(resolution=32)
    e_copy = pickle.loads(pickle.dumps(e))
    assert isinstance(e_copy, EvalTransform)
    assert np.array_equal(e(batch)["image"], e_copy(batch)["image"])


# --- geometry --------------------------------------------------------------------------------


def test_flip_really_mirrors():
    # Square image, area 1, ratio 1: the crop is the whole image, so each output is either the
    # resized image or its mirror.
    arr = coord_image(64, 64)
    batch = {"jpg": np.array([jpeg(arr)] * 16, dtype=object), "cls": np.array([b"1"] * 16, dtype=object)}
    plain = A.decode_cropped(batch["jpg"][0], lambda w, h: A.Box(0, 0, w, h), 48)
    mirror = plain[:, ::-1]
    assert not np.array_equal(plain, mirror)
    flips = []
    for seed in range(4):
        t = train_transform(resolution=48, area=(1, 1), ratio=(1, 1), color=False, seed=seed)
        for img in t(batch)["image"]:
            assert np.array_equal(img, plain) or np.array_equal(img, mirror)
            flips.append(np.array_equal(img, mirror))
    assert 0.3 < np.mean(flips) < 0.7
    t = train_transform(resolution=48, area=(1, 1), ratio=(1, 1), color=False, flip=False, seed=0)
    assert all(np.array_equal(img, plain) for img in t(batch)["image"])


def test_train_crops_are_whole_pixel_regions_of_the_image():
    # Without colour, every output pixel lies within the image's colour range, and the crops
    # vary in position (mean R = mean x) from sample to sample.
    arr = coord_image(120, 90)
    batch = {"jpg": np.array([jpeg(arr)] * 32, dtype=object), "cls": np.array([0] * 32)}
    out = train_transform(resolution=32, color=False, flip=False, seed=3)(batch)["image"]
    mean_r = out[..., 0].reshape(32, -1).mean(1)
    assert mean_r.std() > 10
    assert (out[..., 0][:, :, 0] <= out[..., 0][:, :, -1] + 2).all()


def test_color_changes_pixels_and_keeps_shape():
    batch = make_batch(4)
    plain = train_transform(resolution=32, color=False, seed=2)(batch)["image"]
    colour = train_transform(resolution=32, color=True, seed=2)(batch)["image"]
    assert plain.shape == colour.shape and not np.array_equal(plain, colour)


def test_eval_transform_is_protocol_one():
    batch = make_batch(4)
    out = eval_transform(resolution=40)(batch)["image"]
    for jpg, img in zip(batch["jpg"], out):
        decoded = Image.open(io.BytesIO(jpg)).convert("RGB")
        assert np.array_equal(img, crops.PROTOCOLS["1"](decoded, 40)[0])


def test_eval_transform_is_deterministic_and_central():
    arr = coord_image(300, 200)
    batch = {"jpg": np.array([jpeg(arr)], dtype=object), "cls": np.array([b"4"], dtype=object)}
    a = eval_transform(resolution=64, crop_fraction=0.5)(batch)["image"][0]
    b = eval_transform(resolution=64, crop_fraction=0.5)(batch)["image"][0]
    assert np.array_equal(a, b)
    # The central half: mean R and G at the middle of the 0..255 ramps.
    assert abs(a[..., 0].mean() - 127.5) < 3 and abs(a[..., 1].mean() - 127.5) < 3
    assert a[..., 0].min() > 255 * 0.24 and a[..., 0].max() < 255 * 0.76


def test_grayscale_jpeg_comes_out_rgb():
    gray = np.tile(np.linspace(0, 255, 80).astype(np.uint8), (60, 1))
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "JPEG")
    batch = {"jpg": np.array([buf.getvalue()], dtype=object), "cls": np.array([b"0"], dtype=object)}
    out = train_transform(resolution=20, seed=0, color=False)(batch)["image"]
    assert out.shape == (1, 20, 20, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


# --- presets ---------------------------------------------------------------------------------


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
    ],
)
def test_train_preset_rejects_bad_arguments(kwargs):
    with pytest.raises(UserError):
        train_transform(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"resolution": -5}, {"resolution": 32, "crop_fraction": 0}, {"resolution": 32, "crop_fraction": 1.2}],
)
def test_eval_preset_rejects_bad_arguments(kwargs):
    with pytest.raises(UserError):
        eval_transform(**kwargs)


def test_presets_are_keyword_only_and_keep_their_settings():
    with pytest.raises(TypeError):
        train_transform(299)  # type: ignore[misc]
    t = train_transform(resolution=299, area=(0.05, 1), seed=np.int64(4))
    settings = (t.resolution, t.area, t.ratio, t.flip, t.color, t.seed)
    assert settings == (299, (0.05, 1.0), (0.75, 4 / 3), True, True, 4)
    assert "299" in repr(t) and "calls" not in repr(t)
    e = eval_transform(resolution=299)
    assert (e.resolution, e.crop_fraction) == (299, 0.875)
