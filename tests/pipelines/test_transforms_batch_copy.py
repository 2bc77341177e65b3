"""_decode_all's copy of mirrored views into the batch: same bytes as NumPy's plain assignment."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines import augment as A
from pipelines.errors import UserError
from pipelines.transforms import _decode_all, train_transform

pytestmark = pytest.mark.unit


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_decode_all_copies_contiguous_mirrored_and_other_views_exactly():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (4, 17, 17, 3), dtype=np.uint8)
    views = [
        base[0],  # contiguous
        base[1][:, ::-1],  # mirrored, as TrainTransform.augment flips
        base[2][::-1, ::-1],  # both axes reversed
        np.asfortranarray(base[3]),  # another non-contiguous layout
    ]
    batch = {"jpg": np.array([b"a", b"b", b"c", b"d"], dtype=object)}
    out = _decode_all(batch, 17, lambda data: views[b"abcd".index(data)])
    assert out.dtype == np.uint8 and out.shape == (4, 17, 17, 3)
    for got, want in zip(out, views):
        assert np.array_equal(got, want)


def test_decode_all_still_rejects_a_wrong_shape_and_names_failing_samples():
    batch = {"jpg": np.array([b"x"], dtype=object)}
    with pytest.raises(ValueError):
        _decode_all(batch, 8, lambda data: np.zeros((9, 9, 3), np.uint8)[:, ::-1])

    def fail(data):
        raise UserError("cannot decode image: test")

    with pytest.raises(UserError, match="sample 0"):
        _decode_all(batch, 8, fail)


def test_train_transform_images_are_the_decoded_crops_mirrored_where_drawn():
    rng = np.random.default_rng(1)
    arrs = [rng.integers(0, 256, (60 + 7 * i, 80 - 5 * i, 3), dtype=np.uint8) for i in range(8)]
    batch = {"jpg": np.array([_jpeg(a) for a in arrs], dtype=object), "cls": np.arange(8)}
    fn = train_transform(resolution=32, color=False, seed=3)
    out = fn(batch)["image"]
    # Replay the same draws: the transform's generator for its first call, in draw_crop's order.
    replay = train_transform(resolution=32, color=False, seed=3)
    gen = replay.rng_for(batch)
    flips = []
    for data, got in zip(batch["jpg"], out):
        box_and_flip = []

        def box_fn(width, height):
            box, mirror = replay.draw(gen, width, height)
            box_and_flip.append(mirror)
            return box

        img = A.decode_cropped(data, box_fn, 32)
        want = img[:, ::-1] if box_and_flip[0] else img
        flips.append(box_and_flip[0])
        assert np.array_equal(got, want)
    assert any(flips) and not all(flips)
