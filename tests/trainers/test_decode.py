"""trainers.decode: device-side decode, crop, resize and flip of a train_crop_transform batch.

CI has no GPU and no torchvision: there the CPU path (Pillow decode, the same torch resize) is
checked against the CPU pipeline; the nvJPEG path is the gpu-marked test at the end.
"""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.errors import UserError
from pipelines.transforms import train_crop_transform, train_transform
from trainers.decode import TORCHVISION_MISSING, crop_resize_flip, decode_batch, decode_jpegs

RESOLUTION = 64

# Tolerances against the CPU pipeline, measured on these images over 40 seeds x 8 crops: mean
# 0.22 levels, 99% of values within 1 level, at most 0.41 mean in one image, at most 1 level
# away from the crop's border. torch's antialiased bilinear is Pillow's kernel in float32; Pillow
# works in fixed point with a uint8 image between its horizontal and vertical passes, hence the
# 1 level. At the border more differ (up to 24 levels seen) because Pillow's resize with a box
# reads pixels just outside the box where the kernel reaches them, and a crop cannot.
MEAN_LEVELS = 0.5
P99_LEVELS = 2
INTERIOR_LEVELS = 1


def textured_jpeg(width: int, height: int, seed: int) -> bytes:
    """Colour ramps plus 4x4-pixel noise blocks, so resize and decode differences show."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    base = np.stack([x, y, np.full_like(x, 128)], -1)
    noise = rng.normal(0, 30, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:height, :width]
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_batch(n: int = 8) -> dict:
    """Alternately 120x90 and 90x120: at resolution 64 no crop of these is DCT-scaled on the CPU path."""
    jpgs = [textured_jpeg(*((120, 90) if i % 2 == 0 else (90, 120)), seed=i) for i in range(n)]
    return {"jpg": np.array(jpgs, dtype=object), "cls": np.arange(n) % 5}


def interior_margin(box) -> int:
    """Output pixels at the crop's border that can see pixels outside the box in Pillow's resize.

    The bilinear kernel reaches one input pixel past the box when upsampling (R / side output
    pixels) and about one output pixel when downsampling.
    """
    return math.ceil(RESOLUTION / min(int(box[2]), int(box[3]))) + 1


def assert_close_to_cpu_pipeline(got: np.ndarray, want: np.ndarray, boxes) -> None:
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    stats = f"mean {diff.mean():.3f}, p99 {np.percentile(diff, 99)}, max {diff.max()}"
    assert diff.mean() < MEAN_LEVELS, stats
    assert np.percentile(diff, 99) <= P99_LEVELS, stats
    for i, box in enumerate(boxes):
        m = interior_margin(box)
        assert diff[i, m:-m, m:-m].max() <= INTERIOR_LEVELS, f"image {i}, box {box}: {stats}"


@pytest.mark.unit
@pytest.mark.parametrize("seed", [0, 5])
def test_decode_batch_matches_the_cpu_pipeline(seed):
    batch = make_batch()
    want = train_transform(resolution=RESOLUTION, color=False, seed=seed)(batch)["image"]
    crops = train_crop_transform(resolution=RESOLUTION, seed=seed)(batch)
    got = decode_batch(crops, "cpu", resolution=RESOLUTION)
    assert got.shape == (8, RESOLUTION, RESOLUTION, 3) and got.dtype == torch.uint8 and got.is_contiguous()
    assert_close_to_cpu_pipeline(got.numpy(), want, crops["box"])


@pytest.mark.unit
def test_flip_mirrors_exactly():
    crops = train_crop_transform(resolution=RESOLUTION, seed=2)(make_batch())
    plain = decode_batch({**crops, "flip": np.zeros(8, dtype=bool)}, "cpu", resolution=RESOLUTION)
    mirrored = decode_batch({**crops, "flip": np.ones(8, dtype=bool)}, "cpu", resolution=RESOLUTION)
    assert torch.equal(mirrored, plain.flip(2))
    assert not torch.equal(mirrored, plain)


@pytest.mark.unit
def test_whole_image_at_its_own_size_is_unchanged():
    jpg = textured_jpeg(48, 32, seed=3)
    (img,) = decode_jpegs([jpg], "cpu")
    assert img.shape == (3, 32, 48) and img.dtype == torch.uint8
    assert np.array_equal(img.permute(1, 2, 0).numpy(), np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")))
    square = img[:, :, 8:40]
    out = crop_resize_flip([img], np.array([[8, 0, 32, 32]]), np.array([False]), resolution=32)
    assert torch.equal(out[0], square.permute(1, 2, 0))


@pytest.mark.unit
def test_boxes_and_flips_as_cpu_tensors():
    crops = train_crop_transform(resolution=RESOLUTION, seed=4)(make_batch(3))
    images = decode_jpegs(crops["jpg"], "cpu")
    from_numpy = crop_resize_flip(images, crops["box"], crops["flip"], resolution=RESOLUTION)
    from_tensors = crop_resize_flip(
        images, torch.from_numpy(crops["box"]), torch.from_numpy(crops["flip"]), resolution=RESOLUTION
    )
    assert torch.equal(from_numpy, from_tensors)


@pytest.mark.unit
def test_device_resident_boxes_are_refused():
    # A device tensor's values would need a host sync; the meta device stands in for CUDA here.
    images = decode_jpegs([textured_jpeg(40, 30, seed=0)], "cpu")
    with pytest.raises(ValueError, match="host data"):
        boxes = torch.zeros((1, 4), dtype=torch.int32, device="meta")
        crop_resize_flip(images, boxes, np.array([False]), resolution=16)


@pytest.mark.unit
@pytest.mark.parametrize("box", [[0, 0, 41, 30], [-1, 0, 10, 10], [0, 25, 10, 10], [0, 0, 0, 10]])
def test_box_outside_the_image_is_refused(box):
    images = decode_jpegs([textured_jpeg(40, 30, seed=0)], "cpu")
    with pytest.raises(ValueError, match="not inside its 40 x 30 image"):
        crop_resize_flip(images, np.array([box]), np.array([False]), resolution=16)


@pytest.mark.unit
def test_shape_mismatch_is_refused():
    images = decode_jpegs([textured_jpeg(40, 30, seed=0)] * 2, "cpu")
    with pytest.raises(ValueError, match="boxes"):
        crop_resize_flip(images, np.zeros((1, 4), dtype=np.int32), np.zeros(2, dtype=bool), resolution=16)


@pytest.mark.unit
def test_empty_batch():
    empty = {"jpg": np.array([], dtype=object), "cls": np.array([], dtype=object)}
    crops = train_crop_transform(resolution=32, seed=0)(empty)
    out = decode_batch(crops, "cpu", resolution=32)
    assert out.shape == (0, 32, 32, 3) and out.dtype == torch.uint8


@pytest.mark.unit
def test_corrupt_jpeg_names_its_position():
    with pytest.raises(UserError, match=r"JPEG 1 of 2: cannot decode image"):
        decode_jpegs([textured_jpeg(40, 30, seed=0), b"garbage"], "cpu")


@pytest.mark.unit
def test_missing_torchvision_is_a_user_error_before_cuda_is_touched(monkeypatch):
    # None in sys.modules makes `import torchvision` raise ModuleNotFoundError; no CUDA here, so
    # reaching CUDA first would raise something else.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    crops = train_crop_transform(resolution=RESOLUTION, seed=0)(make_batch(2))
    with pytest.raises(UserError) as err:
        decode_batch(crops, torch.device("cuda"), resolution=RESOLUTION)
    assert str(err.value) == TORCHVISION_MISSING
    assert "\n" not in TORCHVISION_MISSING and "pip install 'incept[gpu]'" in TORCHVISION_MISSING


@pytest.mark.gpu
def test_nvjpeg_matches_the_cpu_path():
    pytest.importorskip("torchvision")
    batch = make_batch()
    crops = train_crop_transform(resolution=RESOLUTION, seed=0)(batch)
    gpu = decode_batch(crops, "cuda", resolution=RESOLUTION)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8 and gpu.shape == (8, RESOLUTION, RESOLUTION, 3)
    mirrored = decode_batch({**crops, "flip": ~crops["flip"]}, "cuda", resolution=RESOLUTION)
    assert torch.equal(mirrored, gpu.flip(2))
    # Against the same torch resize on Pillow's decode, only nvJPEG's IDCT and chroma upsampling
    # differ from libjpeg's. This bound has not yet been measured on a device: the assertion
    # messages print the measured numbers.
    cpu = decode_batch(crops, "cpu", resolution=RESOLUTION).numpy().astype(np.int16)
    diff = np.abs(gpu.cpu().numpy().astype(np.int16) - cpu)
    stats = f"nvJPEG vs Pillow decode: mean {diff.mean():.3f}, p99 {np.percentile(diff, 99)}, max {diff.max()}"
    assert diff.mean() < 2 and np.percentile(diff, 99) <= 8, stats
