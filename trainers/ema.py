"""Running average of the model for evaluation (paper section 8; TF reference: decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(num_updates: int, decay: float = 0.9999) -> float:
    """TF's `ExponentialMovingAverage(decay, num_updates)` decay: min(decay, (1 + n) / (10 + n)).

    The warm-up keeps the average from being dominated by the random initialisation early on:
    d = 0.1 for n = 0, 0.5 for n = 8, and `decay` from n = 9 * decay / (1 - decay) - 1 on
    (89,990 updates for 0.9999).
    """
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


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
