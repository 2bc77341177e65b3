"""Running average of the model for evaluation (paper section 8; TF reference: decay 0.9999).

A decay is per optimiser step, so the same number averages over more images at a larger batch:
0.9999 is about 10,000 steps, a quarter of an ImageNet epoch at batch 32 and 64 epochs at 8,192.
`step_decay` carries a decay stated at one global batch to another, keeping the horizon in images.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def ema_decay(num_updates: int, decay: float = 0.9999) -> float:
    """TF's `ExponentialMovingAverage(decay, num_updates)` decay: min(decay, (1 + n) / (10 + n)).

    The warm-up keeps the average from being dominated by the random initialisation early on:
    d = 0.1 for n = 0, 0.5 for n = 8, and `decay` from n = 9 * decay / (1 - decay) - 1 on
    (89,990 updates for 0.9999).
    """
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def step_decay(decay: float, *, global_batch: int, reference_batch: int) -> float:
    """The decay per optimiser step for `decay` stated at `reference_batch` images: decay ** (global_batch / reference_batch).

    One step at the global batch then shrinks the old average as much as global_batch / reference_batch
    steps at the reference batch would, so an image's weight in the average falls with the number of
    images seen since, whatever the batch. reference_batch 0: `decay` is already per step (returned
    as is). TF's warm-up (`ema_decay`) still counts optimiser steps on top of the result.
    """
    if global_batch <= 0 or reference_batch < 0:
        raise ValueError(f"global_batch must be positive and reference_batch non-negative, got {global_batch} and {reference_batch}")
    if reference_batch == 0:
        return decay
    return decay ** (global_batch / reference_batch)


def horizon_steps(decay: float) -> float:
    """Optimiser steps after which an update's weight in the average has fallen by e: -1 / ln(decay).

    About 1 / (1 - decay) for a decay near 1 (9,999.5 for 0.9999, 199.5 for 0.995); unlike that
    approximation it is exactly proportional to reference_batch / global_batch under `step_decay`,
    so the horizon in images (this x global batch) is the same at any batch. 0 for decay 0 (off).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    return 0.0 if decay == 0.0 else -1.0 / math.log(decay)


def warmup_updates(decay: float) -> int:
    """The first update count n at which `ema_decay(n, decay)` reaches `decay` (TF's warm-up is over).

    (1 + n) / (10 + n) >= decay from n = (10 * decay - 1) / (1 - decay): 1,790 for 0.995, 89,990 for 0.9999.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    n = max(math.ceil((10.0 * decay - 1.0) / (1.0 - decay)), 0)
    # The closed form in floating point can land one off; settle it on the function the average uses.
    while n > 0 and ema_decay(n - 1, decay) >= decay:
        n -= 1
    while ema_decay(n, decay) < decay:
        n += 1
    return n


def _bare(model: nn.Module) -> nn.Module:
    """The module under DDP and torch.compile wrappers, whose names match the average's."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)


class ModelEma:
    """Exponential moving average of a model's parameters and BatchNorm running statistics.

    The averaged model is `self.module` (an eval-mode copy, never trained): evaluate and save it.
    Each `update(model)` after n earlier updates does avg = d * avg + (1 - d) * value with
    d = ema_decay(n, decay). Floating-point buffers (BN running mean and variance) are averaged like
    parameters, as TF averages its moving statistics; integer buffers (BN's batch count) are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, device: torch.device | str | None = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.num_updates = 0
        # TF starts the shadow variables at the variables' values.
        self.module = copy.deepcopy(_bare(model)).eval()
        self.module.requires_grad_(False)
        if device is not None:
            self.module.to(device)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = ema_decay(self.num_updates, self.decay)
        averaged, values, copied, sources = [], [], [], []
        ema_state = self.module.state_dict(keep_vars=True)
        for name, value in _bare(model).state_dict(keep_vars=True).items():
            target = ema_state[name]
            value = value.detach().to(target.device)
            if target.is_floating_point():
                averaged.append(target)
                values.append(value.to(target.dtype))
            else:
                copied.append(target)
                sources.append(value)
        # avg + (1 - d) * (value - avg) = d * avg + (1 - d) * value, in one fused pass.
        torch._foreach_lerp_(averaged, values, 1.0 - d)
        for target, value in zip(copied, sources):
            target.copy_(value)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "decay": self.decay, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
