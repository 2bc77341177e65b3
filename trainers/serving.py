"""The module a service runs: uint8 images in, class probabilities out.

A caller that loads the registered model with plain MLflow should not need to know the
normalisation, so it lives inside: N x R x R x 3 uint8 (RGB, already cropped and resized to the
model's resolution, as `pipelines.crops` does) -> N x C probabilities.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.inception_v3 import normalize


class ServingModel(nn.Module):
    def __init__(self, model: nn.Module, *, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> None:
        super().__init__()
        self.model = model.eval()
        self.mean = tuple(mean)
        self.std = tuple(std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = normalize(images, mean=self.mean, std=self.std, channels_last=False)
        return torch.softmax(self.model(x).float(), dim=1)
