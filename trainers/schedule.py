"""The learning rate: a base rate scaled to the global batch, times 0.94 every few epochs, down to a floor.

The paper (section 8): 0.045 at batch 32, x0.94 every 2 epochs. The large-batch reference
(REFERENCE.md; configs/imagenet.yaml): 0.165 per 256 images, x0.94 every 3 epochs, never below
1e-4 of the initial rate.
"""

from __future__ import annotations

import math


def scaled_lr(global_batch: int, base_lr: float = 0.045, base_batch: int = 32) -> float:
    """The paper's learning rate carried to a synchronous global batch: base_lr * global_batch / base_batch.

    Why linear (Goyal et al., arXiv 1706.02677) and not square-root scaling, which suits adaptive
    optimisers: with eps = 1.0 inside the square root and the mean square starting at ones and decaying
    towards E[g^2] << 1, sqrt(ms + eps) stays near 1, so the TF RMSProp update is in effect momentum SGD,
    where the step per image is what must be kept. It also matches the paper's own setting: 50
    asynchronous replicas each applied 0.045 to a batch of 32, so 50 updates over 1,600 images sum to
    one synchronous step of 0.045 x 50 at batch 1,600. Large factors need the warm-up of
    `learning_rate` (Goyal et al. use 5 epochs).

    The base is a measured point, not a law: the only published large-batch Inception-v3 run
    (tensorflow/tpu, 1,024 images) states 0.165 per 256, which gives 0.66 at 1,024 where scaling the
    paper's 0.045 per 32 would give 1.44, more than twice as much. Carry the reference's base
    (base_lr 0.165, base_batch 256) rather than the paper's to batches near it.
    """
    if global_batch <= 0 or base_batch <= 0:
        raise ValueError(f"batch sizes must be positive, got {global_batch} and {base_batch}")
    return base_lr * global_batch / base_batch


def learning_rate(
    step: int,
    *,
    steps_per_epoch: int,
    base_lr: float,
    decay_rate: float = 0.94,
    decay_epochs: float = 2.0,
    warmup_epochs: float = 0.0,
    floor: float = 0.0,
) -> float:
    """Learning rate for optimiser step `step` (0-based), evaluated at the fractional epoch step / steps_per_epoch.

    base_lr * decay_rate ** floor(epoch / decay_epochs): the staircase of the TF reference, so the
    rate changes at the step where epoch 2, 4, ... begins, whatever the batch size. The staircase
    stops at `floor` x base_lr (a fraction; the large-batch reference's tf.maximum with 1e-4 of the
    initial rate): 0.94 ** k falls below 1e-4 at k = 149, epoch 447 at 3 epochs a step, so the floor
    guards long runs only.
    During the first warmup_epochs the rate is also multiplied by (step + 1) / warmup_steps, a linear
    ramp whose first step is not wasted at zero and whose last reaches the full rate.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    # One division, so a boundary step gives an exact integer quotient whatever decay_epochs is.
    lr = base_lr * max(decay_rate ** math.floor(step / (steps_per_epoch * decay_epochs)), floor)
    warmup_steps = warmup_epochs * steps_per_epoch
    if step + 1 < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr
