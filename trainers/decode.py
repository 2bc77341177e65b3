"""JPEG decoding on the training device, for `data.decode_on: gpu`.

Why: on GPU clusters the CPU workers' JPEG decoding bounds training (16 CPU workers decode about
2,100 images/s; the GPU step takes about 2,400). With `decode_on: gpu` the CPU workers only draw
each sample's crop and flip (`pipelines.transforms.train_crop_transform`, the same draws as
`train_transform(color=False)`) and ship the JPEG bytes; here the device decodes the batch with
nvJPEG, through `torchvision.io.decode_jpeg`, then crops, resizes and flips. torchvision is an
optional extra for GPU clusters (`pip install 'incept[gpu]'`): no CPU build of it sits beside the
CPU torch wheel, so it is imported only when a CUDA device asks for it.

The result is the uint8 NHWC batch the CPU pipeline ships, so `trainers.inception_v3.normalize`
and the rest of the input path are unchanged. It is close to the CPU pipeline's images, not
equal: torch's antialiased bilinear resize is Pillow's kernel in float32, not Pillow's fixed
point (within 1 level); at the crop's border Pillow's resize also reads the pixels just outside
the box, which a crop cannot (more there: the border pixels; see tests/trainers/test_decode.py);
and nvJPEG's inverse DCT and chroma upsampling are not libjpeg's. Colour distortion, when on,
follows on the device (trainers/feed.py), as it does after CPU decoding.

On a CPU device the JPEGs are decoded with Pillow and resized by the same torch code: that is
the reference the tests in CI compare with the CPU pipeline; the nvJPEG path is tested only on a
machine with a GPU (the gpu-marked test in tests/trainers/test_decode.py).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.augment import check_size
from pipelines.errors import UserError

TORCHVISION_MISSING = (
    "data.decode_on: gpu needs torchvision on the training workers: "
    "pip install 'incept[gpu]' (torchvision built for this torch and CUDA)"
)

# What Pillow raises on bytes it cannot decode, as pipelines.augment.decode_cropped catches.
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _nvjpeg():
    """torchvision's decode_jpeg and its RGB mode, or the UserError that says how to install it."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ModuleNotFoundError as err:
        raise UserError(TORCHVISION_MISSING) from err
    except (ImportError, RuntimeError, OSError) as err:
        # A torchvision built for another torch or CUDA fails here with a RuntimeError or OSError.
        raise UserError(f"{TORCHVISION_MISSING}; importing it failed: {type(err).__name__}: {err}") from err
    return decode_jpeg, ImageReadMode.RGB


def _pillow_rgb(data, index: int, count: int) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as img:
            # np.array, not np.asarray: a writable copy, which torch.from_numpy wants.
            arr = np.array(img.convert("RGB"))
    except _UNREADABLE as err:
        raise UserError(f"JPEG {index} of {count}: cannot decode image: {type(err).__name__}: {err}") from err
    return torch.from_numpy(arr).permute(2, 0, 1)


def decode_jpegs(jpegs, device) -> list[torch.Tensor]:
    """Each JPEG's pixels as uint8 RGB (3, H, W) on `device`, at full resolution.

    CUDA: one batched nvJPEG call (torchvision.io.decode_jpeg); UserError if torchvision cannot be
    imported, raised before CUDA is touched. Any other device: Pillow on the CPU, then a copy.
    """
    device = torch.device(device)
    if device.type == "cuda":
        decode_jpeg, rgb = _nvjpeg()
        if len(jpegs) == 0:
            return []
        with warnings.catch_warnings():
            # The bytes are immutable and decode_jpeg only reads them: no copy is needed.
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            data = [torch.frombuffer(b, dtype=torch.uint8) for b in jpegs]
        return list(decode_jpeg(data, device=device, mode=rgb))
    return [_pillow_rgb(b, i, len(jpegs)).to(device) for i, b in enumerate(jpegs)]


def _host_array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            # Reading a device tensor's values from Python would wait for the device.
            raise ValueError(
                f"{name} must be host data (a NumPy array or a CPU tensor), got a tensor on {values.device}"
            )
        values = values.numpy()
    return np.asarray(values)


def crop_resize_flip(images: list[torch.Tensor], boxes, flips, *, resolution: int) -> torch.Tensor:
    """Crop, resize and mirror each image; uint8 (N, resolution, resolution, 3), NHWC, on the images' device.

    images: uint8 (3, H, W) each, full resolution. boxes: (N, 4) integers, (left, top, width,
    height) in pixels of each image. flips: (N,) bool, mirror left-right. boxes and flips are host
    data (NumPy arrays or CPU tensors), as the CPU workers ship them, so branching on them costs
    no device sync. The resize is bilinear with antialiasing (Pillow's BILINEAR kernel) in
    float32, rounded to nearest; the mirror is applied after it, so it is exact.
    """
    resolution = check_size("resolution", resolution)
    boxes = _host_array(boxes, "boxes")
    flips = _host_array(flips, "flips")
    n = len(images)
    if boxes.shape != (n, 4) or flips.shape != (n,):
        raise ValueError(f"expected boxes (N, 4) and flips (N,) for {n} images, got {boxes.shape} and {flips.shape}")
    if n == 0:
        return torch.empty((0, resolution, resolution, 3), dtype=torch.uint8)
    out = torch.empty((n, 3, resolution, resolution), dtype=torch.float32, device=images[0].device)
    for i, (img, (left, top, width, height), flip) in enumerate(zip(images, boxes.tolist(), flips.tolist())):
        _, img_h, img_w = img.shape
        if width < 1 or height < 1 or left < 0 or top < 0 or left + width > img_w or top + height > img_h:
            raise ValueError(
                f"box {i} (left {left}, top {top}, width {width}, height {height}) "
                f"is not inside its {img_w} x {img_h} image"
            )
        crop = img[None, :, top : top + height, left : left + width].float()
        resized = F.interpolate(
            crop, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )[0]
        out[i] = resized.flip(-1) if flip else resized
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def decode_batch(batch: dict, device, *, resolution: int) -> torch.Tensor:
    """A `train_crop_transform` batch ("jpg", "box", "flip") as uint8 (N, resolution, resolution, 3) on `device`."""
    images = decode_jpegs(batch["jpg"], device)
    if not images:
        return torch.empty((0, resolution, resolution, 3), dtype=torch.uint8, device=device)
    return crop_resize_flip(images, batch["box"], batch["flip"], resolution=resolution)
