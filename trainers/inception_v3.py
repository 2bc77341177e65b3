"""Inception-v3: the network of Szegedy et al., "Rethinking the Inception Architecture" (arXiv 1512.00567).

Table 1 of the paper, with the branch widths of the TF-slim reference (`research/slim/nets/inception_v3.py`)
and torchvision's `inception_v3`, so the parameter count is theirs: 23,834,568 without the auxiliary head.
Blocks are named for the paper's figures; module names (`Mixed_5b` ...) are the reference's, so a
checkpoint reads like table 1.

Shape trails are for width 1.0 at 299x299.

The data config (input size, crop fraction, normalisation) lives here beside the model, as in timm: a
trained model is only usable with the preprocessing it was trained with.
"""

from __future__ import annotations

import functools

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Paper section 8 / TF reference: BatchNorm epsilon 0.001 everywhere.
BN_EPS = 1e-3


@dataclass(frozen=True)
class Variant:
    """One row of the paper's table 2: networks of about equal compute for smaller inputs."""

    resolution: int  # nominal input side in pixels; the last grid is 8x8 there
    first_stride: int  # stride of the first 3x3 conv
    first_pool: bool  # the stem's first 3x3/2 max-pool (after the first conv layers)
    min_input_size: int  # smallest input side the main path accepts: the 8x8 grid shrinks to 1x1


# Minimum sizes are where the last grid reduction (3x3/2, no padding) still has a 3x3 input;
# the paper gives 75 for the 299 network; 39 and 21 follow from the same arithmetic.
VARIANTS = {
    299: Variant(resolution=299, first_stride=2, first_pool=True, min_input_size=75),
    151: Variant(resolution=151, first_stride=1, first_pool=True, min_input_size=39),
    79: Variant(resolution=79, first_stride=1, first_pool=False, min_input_size=21),
}


def min_input_size(resolution: int = 299) -> int:
    """Smallest input side (pixels) that the table 2 variant for `resolution` accepts."""
    return _variant(resolution).min_input_size


def _variant(resolution: int) -> Variant:
    if resolution not in VARIANTS:
        raise ValueError(f"resolution must be one of {sorted(VARIANTS)} (paper table 2), got {resolution}")
    return VARIANTS[resolution]


@dataclass(frozen=True)
class DataConfig:
    """How images must be prepared for the model: travels with it into checkpoints and the registry."""

    input_size: int  # side of the square input, pixels
    crop_fraction: float = 0.875  # evaluation: central crop of this fraction of the image (TF reference)
    interpolation: str = "bilinear"
    # Pixels in [0, 1] become (x - mean) / std: 0.5 / 0.5 maps them to [-1, 1] as the TF reference does.
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def data_config(resolution: int = 299) -> dict:
    """The data config of the table 2 variant for `resolution`, as a plain (JSON-able) dict."""
    _variant(resolution)
    return asdict(DataConfig(input_size=resolution))


def normalize(
    images: torch.Tensor,
    *,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    channels_last: bool = True,
) -> torch.Tensor:
    """uint8 N x H x W x C images -> float32 N x C x H x W, (x / 255 - mean) / std: [-1, 1] by default.

    Meant to run on the device after the uint8 batch is copied there (4x fewer bytes to move).
    The NHWC -> NCHW permute is a view whose memory is already channels_last, so that layout is free;
    `channels_last=False` makes a contiguous NCHW copy.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != len(mean):
        raise ValueError(f"expected uint8 N x H x W x {len(mean)}, got {images.dtype} {tuple(images.shape)}")
    scale, shift = _affine(tuple(mean), tuple(std), 255.0, images.device, last=True)
    x = torch.addcmul(shift, images.float(), scale)  # N x H x W x C, float32
    x = x.permute(0, 3, 1, 2)
    return x if channels_last else x.contiguous()


def normalize_unit(
    x: torch.Tensor,
    *,
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """float N x C x H x W in [0, 1] -> (x - mean) / std, as `normalize` scales uint8 ones; keeps the memory format.

    For pixels already in [0, 1] on the device, e.g. after the colour distortion (trainers/color.py).
    """
    scale, shift = _affine(tuple(mean), tuple(std), 1.0, x.device, last=False)
    return torch.addcmul(shift, x, scale)


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple, std: tuple, unit: float, device: torch.device, *, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel on `device`, made once: copying a new constant to a GPU every step
    would make the host wait for it (a blocking copy). `last`: channels on the last axis (NHWC)."""
    shape = (-1,) if last else (1, -1, 1, 1)
    scale = torch.tensor([1.0 / (unit * s) for s in std], device=device).view(shape)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(shape)
    return scale, shift


class InceptionOutputs(NamedTuple):
    """Training-mode output. `aux_logits` is None when the model has no auxiliary head."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None


class ConvBnRelu(nn.Module):
    """The paper's conv unit: conv without bias (BatchNorm's shift replaces it) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionFig5(nn.Module):
    """35x35 block, figure 5: the 5x5 convolution factorised into two 3x3.

    The reference implementations keep a plain 5x5 branch beside the factorised double-3x3 one;
    we keep it too, since the 23,834,568 parameters of the reference include it.
    """

    def __init__(self, in_channels: int, pool_features: int, c) -> None:
        super().__init__()
        self.branch1x1 = ConvBnRelu(in_channels, c(64), kernel_size=1)
        self.branch5x5_1 = ConvBnRelu(in_channels, c(48), kernel_size=1)
        self.branch5x5_2 = ConvBnRelu(c(48), c(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = ConvBnRelu(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = ConvBnRelu(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = ConvBnRelu(c(96), c(96), kernel_size=3, padding=1)
        self.branch_pool = ConvBnRelu(in_channels, c(pool_features), kernel_size=1)
        self.out_channels = c(64) + c(64) + c(96) + c(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class GridReduction35to17(nn.Module):
    """35x35 -> 17x17, figure 10: stride-2 conv branches beside a stride-2 pool, concatenated,
    so the grid shrinks while the filter bank grows (section 7: no representational bottleneck)."""

    def __init__(self, in_channels: int, c) -> None:
        super().__init__()
        self.branch3x3 = ConvBnRelu(in_channels, c(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = ConvBnRelu(in_channels, c(64), kernel_size=1)
        self.branch3x3dbl_2 = ConvBnRelu(c(64), c(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = ConvBnRelu(c(96), c(96), kernel_size=3, stride=2)
        self.out_channels = c(384) + c(96) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        b3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3dbl, bp], 1)


class InceptionFig6(nn.Module):
    """17x17 block, figure 6: n x n convolutions factorised into 1 x n and n x 1, n = 7 (section 3.2)."""

    def __init__(self, in_channels: int, channels_7x7: int, c) -> None:
        super().__init__()
        c7 = c(channels_7x7)
        self.branch1x1 = ConvBnRelu(in_channels, c(192), kernel_size=1)
        self.branch7x7_1 = ConvBnRelu(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = ConvBnRelu(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBnRelu(c7, c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBnRelu(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = ConvBnRelu(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBnRelu(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBnRelu(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBnRelu(c7, c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = ConvBnRelu(in_channels, c(192), kernel_size=1)
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        b7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(b7dbl))
        b7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(b7dbl))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, b7dbl, bp], 1)


class GridReduction17to8(nn.Module):
    """17x17 -> 8x8, figure 10's scheme again, with a factorised 7x7 before the stride-2 3x3."""

    def __init__(self, in_channels: int, c) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBnRelu(in_channels, c(192), kernel_size=1)
        self.branch3x3_2 = ConvBnRelu(c(192), c(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = ConvBnRelu(in_channels, c(192), kernel_size=1)
        self.branch7x7x3_2 = ConvBnRelu(c(192), c(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBnRelu(c(192), c(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBnRelu(c(192), c(192), kernel_size=3, stride=2)
        self.out_channels = c(320) + c(192) + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionFig7(nn.Module):
    """8x8 block, figure 7: filter banks expanded sideways (1x3 beside 3x1) for high-dimensional
    representations on the coarsest grid (section 2, principle 2)."""

    def __init__(self, in_channels: int, c) -> None:
        super().__init__()
        self.branch1x1 = ConvBnRelu(in_channels, c(320), kernel_size=1)
        self.branch3x3_1 = ConvBnRelu(in_channels, c(384), kernel_size=1)
        self.branch3x3_2a = ConvBnRelu(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBnRelu(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBnRelu(in_channels, c(448), kernel_size=1)
        self.branch3x3dbl_2 = ConvBnRelu(c(448), c(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = ConvBnRelu(c(384), c(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBnRelu(c(384), c(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = ConvBnRelu(in_channels, c(192), kernel_size=1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, b3dbl, bp], 1)


class AuxHeadFig8(nn.Module):
    """Auxiliary classifier on the last 17x17 layer, figure 8, in its "BN-auxiliary" form (section 10).

    `fc` is the head's fully connected layer: a 5x5 conv over the 5x5 pooled grid, as in the
    reference code, batch-normalised like every conv unit. Used in training only, as a regulariser.
    """

    def __init__(self, in_channels: int, num_classes: int, c) -> None:
        super().__init__()
        self.conv0 = ConvBnRelu(in_channels, c(128), kernel_size=1)
        self.fc = ConvBnRelu(c(128), c(768), kernel_size=5)
        self.classifier = nn.Linear(c(768), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 768 x 17 x 17
        if min(x.shape[-2:]) >= 17:
            x = F.avg_pool2d(x, kernel_size=5, stride=3)
        else:
            # Below the nominal resolution the 17x17 grid is smaller than the 5x5/3 pool needs:
            # average to the 5x5 grid the `fc` conv expects instead.
            x = F.adaptive_avg_pool2d(x, 5)
        # N x 768 x 5 x 5
        x = self.conv0(x)
        # N x 128 x 5 x 5
        x = self.fc(x)
        # N x 768 x 1 x 1 (larger inputs: averaged below)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        # N x 768
        return self.classifier(x)


def _scaler(width: float):
    """Channel count -> channel count at `width`; round to nearest, at least 1."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return lambda channels: max(1, int(round(channels * width)))


class InceptionV3(nn.Module):
    """Inception-v3 (paper table 1). Training mode returns `InceptionOutputs(logits, aux_logits)`,
    with `aux_logits` None when built without the auxiliary head; eval mode returns the logits tensor."""

    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = True,
        resolution: int = 299,
        width: float = 1.0,
        dropout: float = 0.2,
        *,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        variant = _variant(resolution)
        c = _scaler(width)
        self.num_classes = num_classes
        self.resolution = resolution
        self.width = width
        self.min_input_size = variant.min_input_size
        self.data_config = data_config(resolution)

        self.Conv2d_1a_3x3 = ConvBnRelu(3, c(32), kernel_size=3, stride=variant.first_stride)
        self.Conv2d_2a_3x3 = ConvBnRelu(c(32), c(32), kernel_size=3)
        self.Conv2d_2b_3x3 = ConvBnRelu(c(32), c(64), kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2) if variant.first_pool else nn.Identity()
        self.Conv2d_3b_1x1 = ConvBnRelu(c(64), c(80), kernel_size=1)
        self.Conv2d_4a_3x3 = ConvBnRelu(c(80), c(192), kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionFig5(c(192), pool_features=32, c=c)
        self.Mixed_5c = InceptionFig5(self.Mixed_5b.out_channels, pool_features=64, c=c)
        self.Mixed_5d = InceptionFig5(self.Mixed_5c.out_channels, pool_features=64, c=c)
        self.Mixed_6a = GridReduction35to17(self.Mixed_5d.out_channels, c=c)
        self.Mixed_6b = InceptionFig6(self.Mixed_6a.out_channels, channels_7x7=128, c=c)
        self.Mixed_6c = InceptionFig6(self.Mixed_6b.out_channels, channels_7x7=160, c=c)
        self.Mixed_6d = InceptionFig6(self.Mixed_6c.out_channels, channels_7x7=160, c=c)
        self.Mixed_6e = InceptionFig6(self.Mixed_6d.out_channels, channels_7x7=192, c=c)
        self.AuxLogits = AuxHeadFig8(self.Mixed_6e.out_channels, num_classes, c=c) if aux_logits else None
        self.Mixed_7a = GridReduction17to8(self.Mixed_6e.out_channels, c=c)
        self.Mixed_7b = InceptionFig7(self.Mixed_7a.out_channels, c=c)
        self.Mixed_7c = InceptionFig7(self.Mixed_7b.out_channels, c=c)
        self.num_features = self.Mixed_7c.out_channels
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

        _init_weights(self, bn_momentum)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image -> (last 8x8 feature map, auxiliary logits in training mode with the head, else None)."""
        # N x 3 x 299 x 299
        x = self.Conv2d_1a_3x3(x)
        # N x 32 x 149 x 149
        x = self.Conv2d_2a_3x3(x)
        # N x 32 x 147 x 147
        x = self.Conv2d_2b_3x3(x)
        # N x 64 x 147 x 147
        x = self.maxpool1(x)
        # N x 64 x 73 x 73
        x = self.Conv2d_3b_1x1(x)
        # N x 80 x 73 x 73
        x = self.Conv2d_4a_3x3(x)
        # N x 192 x 71 x 71
        x = self.maxpool2(x)
        # N x 192 x 35 x 35
        x = self.Mixed_5b(x)
        # N x 256 x 35 x 35
        x = self.Mixed_5c(x)
        # N x 288 x 35 x 35
        x = self.Mixed_5d(x)
        # N x 288 x 35 x 35
        x = self.Mixed_6a(x)
        # N x 768 x 17 x 17
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        x = self.Mixed_6e(x)
        # N x 768 x 17 x 17
        aux = self.AuxLogits(x) if self.AuxLogits is not None and self.training else None
        x = self.Mixed_7a(x)
        # N x 1280 x 8 x 8
        x = self.Mixed_7b(x)
        # N x 2048 x 8 x 8
        x = self.Mixed_7c(x)
        # N x 2048 x 8 x 8
        return x, aux

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        # N x 2048 x 8 x 8 (larger inputs: a larger grid, averaged all the same)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        # N x 2048
        return self.fc(self.dropout(x))

    def forward(self, x: torch.Tensor) -> InceptionOutputs | torch.Tensor:
        features, aux = self.forward_features(x)
        logits = self.forward_head(features)
        # N x num_classes
        if self.training:
            return InceptionOutputs(logits, aux)
        return logits


def _trunc_normal_(weight: torch.Tensor, std: float) -> None:
    # TF's truncated normal: redraw beyond 2 standard deviations.
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


@torch.no_grad()
def _init_weights(model: InceptionV3, bn_momentum: float) -> None:
    """TF-slim's initialisation: truncated normal std 0.1 for convs (its `inception_v3_arg_scope`),
    0.01 for the auxiliary head's `fc`, 0.001 for the classifiers, so that both start near uniform
    (slim gives 0.001 to the auxiliary classifier only); zero biases; BN scale 1, shift 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            _trunc_normal_(module.weight, 0.1)
        elif isinstance(module, nn.Linear):
            _trunc_normal_(module.weight, 0.001)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.momentum = bn_momentum
    if model.AuxLogits is not None:
        _trunc_normal_(model.AuxLogits.fc.conv.weight, 0.01)


def inception_v3(
    num_classes: int = 1000,
    aux_logits: bool = True,
    resolution: int = 299,
    width: float = 1.0,
    dropout: float = 0.2,
    *,
    bn_momentum: float = 0.1,
) -> InceptionV3:
    """Inception-v3 of the paper.

    Args:
        num_classes: classifier outputs.
        aux_logits: build the BN-auxiliary head (section 10); it runs in training mode only.
        resolution: 299, 151 or 79, the table 2 variants; each ends on an 8x8 grid at that input
            size and accepts any input of at least `min_input_size(resolution)`.
        width: multiplies every channel count (rounded, at least 1); 1.0 is the paper's network.
        dropout: drop probability before the classifier; 0.2 is the TF reference's keep 0.8.
        bn_momentum: PyTorch BatchNorm momentum (1 - TF decay). The TF reference's 0.9997 suits
            its 50 replicas x 100 epochs; 0.1 (PyTorch's and torchvision's) suits short runs.
    """
    return InceptionV3(
        num_classes=num_classes,
        aux_logits=aux_logits,
        resolution=resolution,
        width=width,
        dropout=dropout,
        bn_momentum=bn_momentum,
    )

