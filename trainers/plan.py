"""A run resolved before it starts: batches, steps, the learning rate, the average, checkpoints, shards.

`incept train --dry-run` prints this without Ray or MLflow, so a cluster's recipe can be read, and
set against the large-batch reference, before a cluster is paid for. Every number comes from the
functions the training loop calls with the loop's arguments (`steps_per_epoch`, `scaled_lr`,
`learning_rate`, `step_decay`, `resolution_at`), so the plan and the run cannot disagree.
Pure arithmetic on the recipe: reading the manifest is the caller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.errors import UserError
from pipelines.resolution import resolution_at
from pipelines.stream import steps_per_epoch
from trainers.config import Recipe
from trainers.ema import horizon_steps, step_decay, warmup_updates
from trainers.inception_v3 import min_input_size
from trainers.schedule import learning_rate, scaled_lr

# The epochs at which the plan shows the learning rate (plus the end of the warm-up, the first two
# decays and the last step): enough to see the staircase without printing it.
LR_EPOCHS = (0, 10, 30, 100)


@dataclass(frozen=True)
class LargeBatchReference:
    """The only published large-batch Inception-v3 run: tensorflow/tpu models/experimental/inception/
    inception_v3.py (REFERENCE.md, "Large-batch reference"); the Cloud TPU guide reports about 78.1%
    top-1 after about 170 epochs. Only the values that need arithmetic to compare live here."""

    global_batch: int = 1024  # train_batch_size, over num_shards = 8 TPU cores
    per_replica_batch: int = 128  # each core's BatchNorm normalises over its own 128 images
    base_lr: float = 0.165  # per base_batch images: 0.66 at 1,024
    base_batch: int = 256
    ema_decay: float = 0.995  # MOVING_AVERAGE_DECAY, per step at global_batch


REFERENCE = LargeBatchReference()

# The reference's settings that map one to one onto config keys: (key, its value, what it is there).
REFERENCE_KEYS = (
    ("optim.decay_rate", 0.94, "x0.94 per decay"),
    ("optim.decay_epochs", 3.0, "a decay every 3 epochs"),
    ("optim.lr_floor", 1e-4, "a floor of 1e-4 x the initial rate"),
    ("optim.warmup_epochs", 0.0, "no warm-up (its optional one is off by default)"),
    ("optim.alpha", 0.9, "RMSProp decay 0.9"),
    ("optim.momentum", 0.9, "RMSProp momentum 0.9"),
    ("optim.eps", 1.0, "RMSProp epsilon 1.0"),
    ("optim.weight_decay", 4e-5, "weight decay 4e-5 (slim's arg scope)"),
    ("optim.clip_norm", 0.0, "no gradient clipping"),
    ("optim.label_smoothing", 0.1, "label smoothing 0.1"),
    ("optim.aux_weight", 0.4, "auxiliary loss weight 0.4"),
    ("model.bn_momentum", 0.004, "BatchNorm decay 0.996, momentum 0.004 here"),
    ("model.dropout", 0.2, "dropout 0.2 (keep 0.8)"),
    ("model.resolution", 299, "299 x 299 inputs"),
    ("train.epochs", 170, "about 78.1% top-1 after about 170 epochs"),
)


def _value(recipe: Recipe, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(recipe, section), key)


def _ratio(value: float, reference: float) -> str:
    """'8x' or '1/4 of' when the ratio is a whole number either way, else '2.18x'."""
    if value >= reference:
        r = value / reference
        return f"{r:.0f}x" if r == round(r) else f"{r:.3g}x"
    r = reference / value
    return f"1/{r:.0f} of" if r == round(r) else f"{value / reference:.3g}x"


def departures(recipe: Recipe, *, base_lr: float, ema_per_step: float, reference: LargeBatchReference = REFERENCE) -> list[str]:
    """Where `recipe` (with its resolved rate and per-step decay) departs from the large-batch reference, one line each."""
    t, o = recipe.train, recipe.optim
    global_batch = t.batch_size * t.num_workers
    found = []
    if global_batch > reference.global_batch:
        # Goyal et al. (arXiv 1706.02677) needed a 5-epoch warm-up at 8,192 images.
        unwarmed = "" if o.warmup_epochs else " (and with no warm-up: Goyal et al. used 5 epochs at 8,192, optim.warmup_epochs=5)"
        found.append(f"global batch {global_batch:,} is {_ratio(global_batch, reference.global_batch)} the large-batch reference's "
                     f"{reference.global_batch:,}; no published Inception-v3 run used it{unwarmed}")
    elif global_batch < reference.global_batch:
        found.append(f"global batch {global_batch:,} is {_ratio(global_batch, reference.global_batch)} the large-batch reference's "
                     f"{reference.global_batch:,}, at which its rate, average and BatchNorm decay were set")
    if t.batch_size != reference.per_replica_batch:
        found.append(f"per-worker batch {t.batch_size}: BatchNorm normalises over {t.batch_size} images, the reference's over "
                     f"{reference.per_replica_batch} per core")
    reference_lr = scaled_lr(global_batch, base_lr=reference.base_lr, base_batch=reference.base_batch)
    if not math.isclose(base_lr, reference_lr, rel_tol=1e-9):
        how = "optim.lr as given" if o.lr else f"{o.base_lr:g} per {o.base_batch:,} images, scaled linearly"
        found.append(f"base learning rate {base_lr:.4g} ({how}) is {_ratio(base_lr, reference_lr)} the reference rule's "
                     f"{reference_lr:.4g} ({reference.base_lr:g} x {global_batch:,} / {reference.base_batch})")
    reference_images = reference.global_batch * horizon_steps(reference.ema_decay)
    if o.ema_decay == 0:
        found.append(f"optim.ema_decay 0: no parameter averaging; the reference evaluates a {reference.ema_decay:g}-per-step average")
    else:
        images = global_batch * horizon_steps(ema_per_step)
        if not math.isclose(images, reference_images, rel_tol=0.01):
            found.append(f"EMA horizon {images:,.0f} images is {_ratio(images, reference_images)} the reference's {reference_images:,.0f} "
                         f"({reference.ema_decay:g} per step at {reference.global_batch:,}: optim.ema_decay={reference.ema_decay:g} "
                         f"optim.ema_reference_batch={reference.global_batch})")
    if recipe.data.resolution_schedule:
        found.append("data.resolution_schedule: progressive resizing; the reference trains at 299 throughout")
    for key, value, what in REFERENCE_KEYS:
        ours = _value(recipe, key)
        if not math.isclose(ours, value, rel_tol=1e-9, abs_tol=1e-12):
            found.append(f"{key} is {ours:g}; the reference: {what}")
    return found


def _resolution_runs(recipe: Recipe) -> list[list[int]]:
    """[[first epoch, resolution], ...]: the loop's per-epoch resolution, one entry per change."""
    m = recipe.model
    schedule = [list(p) for p in recipe.data.resolution_schedule] or m.resolution  # as the loop builds it
    runs: list[list[int]] = []
    for epoch in range(max(recipe.train.epochs, 1)):
        resolution = resolution_at(epoch, schedule, minimum=min_input_size(m.variant))
        if not runs or runs[-1][1] != resolution:
            runs.append([epoch, resolution])
    return runs


def _shards(num_shards: int | None, workers: int) -> tuple[float | None, str]:
    if num_shards is None:
        return None, "unknown: no manifest read (--assume-samples)"
    per_worker = num_shards / workers
    if num_shards < workers:
        # One read-and-decode task per shard (pipelines/stream.py): fewer shards than workers caps it.
        return per_worker, f"fewer than one per worker: at most {num_shards} read tasks feed {workers} workers; reshard with a smaller --shard-size"
    if num_shards % workers:
        return per_worker, "uneven; harmless: Ray's split gives every worker the same rows, not the same shards"
    return per_worker, "even"


def plan(recipe: Recipe, *, num_samples: int, num_shards: int | None = None) -> dict:
    """The run `recipe` makes of `num_samples` training images in `num_shards` non-empty shards (None: unknown)."""
    t, o = recipe.train, recipe.optim
    world, global_batch = t.num_workers, t.batch_size * t.num_workers
    steps = steps_per_epoch(num_samples, world_size=world, batch_size=t.batch_size)
    if steps == 0 and t.epochs > 0:
        raise UserError(f"{num_samples:,} training images give no full batch of {t.batch_size} on each of {world} workers: "
                        "lower train.batch_size or train.num_workers")
    total = steps * t.epochs
    per_epoch = max(steps, 1)  # as the loop divides by it (train.epochs 0 runs no step)

    # As the loop resolves them (trainers/loop.py).
    base_lr = o.lr or scaled_lr(global_batch, base_lr=o.base_lr, base_batch=o.base_batch)

    def lr_at(step: int) -> float:
        return learning_rate(step, steps_per_epoch=per_epoch, base_lr=base_lr, decay_rate=o.decay_rate, decay_epochs=o.decay_epochs,
                             warmup_epochs=o.warmup_epochs, floor=o.lr_floor)

    ema_per_step = step_decay(o.ema_decay, global_batch=global_batch, reference_batch=o.ema_reference_batch)

    # The first step of each epoch shown; the warm-up's end is where its ramp reaches the full rate.
    starts = {math.ceil(e * steps) for e in (*LR_EPOCHS, o.decay_epochs, 2 * o.decay_epochs)}
    if o.warmup_epochs > 0:
        starts.add(max(math.ceil(o.warmup_epochs * steps) - 1, 0))
    shown = sorted(s for s in starts if s < total) + ([total - 1] if total else [])
    lr_points = [{"epoch": round(s / per_epoch, 4), "step": s, "lr": lr_at(s)} for s in dict.fromkeys(shown)]

    horizon = horizon_steps(ema_per_step) if o.ema_decay > 0 else 0.0
    every = t.checkpoint_every_steps
    per_worker, shard_note = _shards(num_shards, world)
    return {
        "num_samples": num_samples,
        "num_workers": world,
        "per_worker_batch": t.batch_size,
        "global_batch": global_batch,
        "steps_per_epoch": steps,
        "images_dropped_per_epoch": num_samples - steps * global_batch,  # the split's remainder and each rank's last partial batch
        "epochs": t.epochs,
        "total_steps": total,
        "base_lr": base_lr,
        "base_lr_rule": "optim.lr as given" if o.lr else f"optim.base_lr {o.base_lr:g} x {global_batch:,} / optim.base_batch {o.base_batch:,}",
        "lr_floor": base_lr * o.lr_floor,
        "lr_at": lr_points,
        "ema_decay": ema_per_step if o.ema_decay > 0 else 0.0,  # per optimiser step
        "ema_horizon_steps": horizon,
        "ema_horizon_epochs": horizon / per_epoch,  # horizon in images / images trained per epoch
        "ema_warmup_steps": warmup_updates(ema_per_step) if o.ema_decay > 0 else 0,
        # Every epoch ends with a checkpoint; checkpoint_every_steps adds more only when shorter than an epoch.
        "checkpoint_interval_epochs": every / per_epoch if 0 < every < steps else 1.0,
        "resolution_schedule": _resolution_runs(recipe),
        "shards": num_shards,
        "shards_per_worker": per_worker,
        "shards_note": shard_note,
        "departures": departures(recipe, base_lr=base_lr, ema_per_step=ema_per_step),
    }
