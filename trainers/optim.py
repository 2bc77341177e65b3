"""RMSProp in TensorFlow's form, the optimiser of the paper (section 8: decay 0.9, epsilon 1.0)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TF1's `tf.train.RMSPropOptimizer` (centered=False) computes it.

    Per parameter p with gradient g, mean square ms and momentum buffer buf:

        g   = g + weight_decay * p                      (L2 added to the gradient, as TF does)
        ms  = alpha * ms + (1 - alpha) * g^2
        buf = momentum * buf + lr * g / sqrt(ms + eps)
        p   = p - buf

    How it differs from `torch.optim.RMSprop`:
      - eps is inside the square root, sqrt(ms + eps); torch adds it outside, sqrt(ms) + eps.
        With the paper's eps = 1.0 the two are far apart.
      - ms starts at ones, not zeros, so the first steps are not divided by a near-zero mean square.
      - lr is applied inside the momentum buffer, so a learning rate change acts on new gradients only;
        torch applies lr to the whole buffer at every step.
      - weight decay is coupled (L2 on the loss, its gradient added to g before ms), as the TF
        reference regularises; no decoupled (AdamW-style) variant is offered.
      - torch's defaults (alpha 0.99, momentum 0, eps 1e-8) are replaced by the paper's
        (alpha 0.9, momentum 0.9, eps 1.0).

    With momentum 0 the update is p = p - lr * g / sqrt(ms + eps).
    State per parameter: `square_avg`, `momentum_buffer` (when momentum > 0), `step` (an int: calls
    of `step`, skipped ones included).

    `step(finite=mask)` skips the update on the device: with a bool scalar tensor that is False
    (a non-finite gradient norm), parameters and state stay exactly as they were, and no Python
    branch reads the mask, so the host never waits for the GPU. The gradients are zeroed where
    the mask is False (an inf times 0 is NaN) and every decay factor becomes 1.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        alpha: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"invalid alpha (mean-square decay): {alpha}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"invalid momentum: {momentum}")
        if eps < 0.0:
            raise ValueError(f"invalid eps: {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight decay: {weight_decay}")
        defaults = dict(lr=lr, alpha=alpha, momentum=momentum, eps=eps, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None, *, finite: torch.Tensor | None = None):
        """One update; `finite` (a bool scalar tensor): where False, leave parameters and state as they are."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, square_avgs, buffers = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                state = self.state[p]
                if "square_avg" not in state:
                    state["step"] = 0
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                if group["momentum"] > 0 and "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                square_avgs.append(state["square_avg"])
                if group["momentum"] > 0:
                    buffers.append(state["momentum_buffer"])
            if not params:
                continue

            foreach = group["foreach"]
            if foreach is None:
                # One fused kernel per op over all tensors: matters on GPUs (about 300 tensors here).
                foreach = all(p.is_cuda for p in params)
            update = _foreach_update if foreach else _single_tensor_update
            update(
                params,
                grads,
                square_avgs,
                buffers,
                lr=group["lr"],
                alpha=group["alpha"],
                momentum=group["momentum"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                keep=None if finite is None else finite.to(device=params[0].device, dtype=params[0].dtype),
            )
        return loss


def _single_tensor_update(params, grads, square_avgs, buffers, *, lr, alpha, momentum, eps, weight_decay, keep=None):
    # keep: None (always update) or a 0/1 scalar tensor. With keep 0 every factor below becomes the
    # identity: ms * 1 + 0, buf * 1 + 0, p - 0. With keep 1 they are the plain update's factors.
    for i, (p, g, ms) in enumerate(zip(params, grads, square_avgs)):
        if keep is not None:
            g = torch.where(keep.bool(), g, 0.0)
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
            if keep is not None:
                g = g * keep
        ms.mul_(alpha if keep is None else keep * alpha + (1 - keep)).addcmul_(g, g, value=1.0 - alpha)
        rms = ms.add(eps).sqrt_()
        if momentum > 0:
            buf = buffers[i]
            buf.mul_(momentum if keep is None else keep * momentum + (1 - keep)).addcdiv_(g, rms, value=lr)
            p.sub_(buf if keep is None else buf * keep)
        else:
            p.addcdiv_(g, rms, value=-lr)


def _foreach_update(params, grads, square_avgs, buffers, *, lr, alpha, momentum, eps, weight_decay, keep=None):
    if keep is not None:
        # One where per tensor: no foreach form exists, and multiplying by the mask would turn an inf into NaN.
        grads = [torch.where(keep.bool(), g, 0.0) for g in grads]
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
        if keep is not None:
            torch._foreach_mul_(grads, keep)
    torch._foreach_mul_(square_avgs, alpha if keep is None else keep * alpha + (1 - keep))
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1.0 - alpha)
    rms = torch._foreach_add(square_avgs, eps)
    torch._foreach_sqrt_(rms)
    if momentum > 0:
        torch._foreach_mul_(buffers, momentum if keep is None else keep * momentum + (1 - keep))
        torch._foreach_addcdiv_(buffers, grads, rms, value=lr)
        torch._foreach_sub_(params, buffers if keep is None else torch._foreach_mul(buffers, keep))
    else:
        torch._foreach_addcdiv_(params, grads, rms, value=-lr)


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: conv and linear weights decayed, BatchNorm parameters and biases not.

    TF-slim's arg scope puts its L2 regulariser on conv and fully connected weights only.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
