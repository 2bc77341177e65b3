"""The per-worker training loop: the paper's recipe, top to bottom.

    data      Ray Data shard of augmented batches, exactly `steps` full batches per epoch, fed to the
              device ahead of the step (trainers/feed.py: pinned memory, a side stream, colour there)
    model     Inception-v3 with the BN-auxiliary head (channels_last; bf16 autocast on GPU)
    loss      label-smoothed cross-entropy on the main and auxiliary logits
    optimiser RMSProp, TF form (decay 0.9, momentum 0.9, eps 1.0)
    schedule  0.045 per 32 images, x0.94 every 2 epochs, evaluated per step
    clip      global gradient norm 2.0
    step      optimiser step, skipped on the device when the gradient norm is not finite
    EMA       running average of the weights, evaluated on the validation split each epoch
    report    metrics and a checkpoint to Ray Train (a barrier: every rank calls it equally often);
              the host reads loss and norm only then and every train.log_every_steps, never per step

`train_one_epoch` and `evaluate` are plain functions of tensors and iterators; the Ray-specific
steps are in `train_loop_per_worker`, numbered.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.resolution import resolution_at
from pipelines.stream import equal_batches, steps_per_epoch
from trainers import checkpoint
from trainers.clip import clip_grad_norm
from trainers.config import OptimSection, Recipe, recipe_from_dict
from trainers.ema import ModelEma, step_decay
from trainers.feed import Feed, device_batches, model_input
from trainers.inception_v3 import inception_v3, min_input_size, normalize
from trainers.loss import inception_loss
from trainers.optim import RMSpropTF, param_groups_weight_decay
from trainers.schedule import learning_rate, scaled_lr


@dataclass
class EpochStats:
    steps: int = 0
    images: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    skipped: int = 0  # updates skipped on the device for a non-finite gradient norm
    nonfinite: list = field(default_factory=list)  # (first, last) global steps of each read window whose mean loss was not finite

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)


def to_model_input(batch: dict, device: torch.device, *, resolution: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC images -> normalised float NCHW at `resolution` on the device; int64 labels (evaluation)."""
    # Ray hands out read-only arrays; np.require copies only those (torch wants writable memory).
    images = torch.from_numpy(np.require(batch["image"], requirements="W")).to(device, non_blocking=True)
    labels = torch.from_numpy(np.require(batch["label"], requirements="W")).to(device, non_blocking=True)
    x = normalize(images, channels_last=channels_last)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        # Progressive resizing on the device: the pipeline crops at the final resolution once.
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x, labels


class _Window:
    """What the steps since the last read accumulated, on the device: summed, never read per step."""

    def __init__(self, device: torch.device, first_step: int) -> None:
        self.device = device
        self.epoch_loss = torch.zeros((), dtype=torch.float32, device=device)
        self.epoch_skipped = torch.zeros((), dtype=torch.float32, device=device)
        self._reset(first_step)

    def _reset(self, first_step: int) -> None:
        self.first = first_step
        self.steps = 0
        self.images = 0
        self.loss = torch.zeros((), dtype=torch.float32, device=self.device)
        self.skipped = torch.zeros((), dtype=torch.float32, device=self.device)
        self.grad_norm: torch.Tensor | None = None
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, images: int) -> None:
        loss = loss.detach().float()
        self.loss += loss
        self.epoch_loss += loss
        if grad_norm is not None:
            skipped = (~torch.isfinite(grad_norm)).float()
            self.skipped += skipped
            self.epoch_skipped += skipped
        self.grad_norm = grad_norm
        self.steps += 1
        self.images += images

    def read(self, *, lr: float) -> dict:
        """The window's metrics, in one transfer (the host waits for the GPU here); starts a new window."""
        norm = self.grad_norm if self.grad_norm is not None else torch.full((), float("nan"), device=self.device)
        loss_sum, skipped, grad_norm = torch.stack([self.loss, self.skipped, norm.float()]).tolist()
        seconds = time.perf_counter() - self.start
        metrics = {
            "loss": loss_sum / max(self.steps, 1),
            "lr": lr,
            "grad_norm": grad_norm,
            "skipped_steps": int(skipped),
            "images_per_s_worker": self.images / max(seconds, 1e-9),
            "steps": (self.first + 1, self.first + self.steps),  # global steps, counted from 1 as `after_step` counts them
        }
        self._reset(self.first + self.steps)
        return metrics


def train_one_epoch(
    model: torch.nn.Module,
    ema: ModelEma | None,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    *,
    optim: OptimSection,
    lr_at: Callable[[int], float],
    first_step: int,
    feed: Feed,
    resolution: int,
    autocast: Callable[[], contextlib.AbstractContextManager],
    after_step: Callable[[int, Callable[[], dict]], None] = lambda step, read: None,
) -> EpochStats:
    """One pass over `batches`; returns the epoch's statistics.

    Nothing in a step waits for the device: the loss, the gradient norm and the skipped-update
    count accumulate there. `after_step(step, read)` runs after each step; `read()` returns the
    metrics of the steps since the last read (mean loss, last gradient norm, images/s) and is the
    one place the host waits, so call it only when the numbers are needed (logging, checkpoints).
    """
    model.train()
    stats = EpochStats()
    step = first_step
    window = _Window(feed.device, first_step)
    lr = lr_at(step)
    start = time.perf_counter()

    def read() -> dict:
        metrics = window.read(lr=lr)
        first, last = metrics["steps"]
        if last >= first and not math.isfinite(metrics["loss"]):
            stats.nonfinite.append(metrics["steps"])
        return metrics

    for batch in device_batches(batches, feed, first_step=first_step):
        x, y = model_input(batch, feed, resolution=resolution)
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast():
            output = model(x)
        loss = inception_loss(output, y, label_smoothing=optim.label_smoothing, aux_weight=optim.aux_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.clip_norm > 0:
            grad_norm = clip_grad_norm(model.parameters(), optim.clip_norm)
            # A non-finite gradient is skipped on the device rather than written into the weights.
            optimizer.step(finite=torch.isfinite(grad_norm))
        else:
            grad_norm = None
            optimizer.step()
        if ema is not None:
            ema.update(model)
        step += 1
        stats.steps += 1
        stats.images += len(y)
        window.add(loss, grad_norm, len(y))
        after_step(step, read)
    read()  # the epoch's last window: its non-finite losses too
    stats.loss_sum, stats.skipped = (float(v) for v in torch.stack([window.epoch_loss, window.epoch_skipped]).tolist())
    stats.skipped = int(stats.skipped)
    stats.seconds = time.perf_counter() - start
    return stats


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[dict], *, device: torch.device, resolution: int, channels_last: bool, autocast) -> torch.Tensor:
    """[top-1 correct, top-5 correct, count] over `batches`, as a tensor to all-reduce."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in batches:
        x, y = to_model_input(batch, device, resolution=resolution, channels_last=channels_last)
        with autocast():
            logits = model(x)
        top5 = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        totals[0] += (top5[:, 0] == y).sum()
        totals[1] += (top5 == y[:, None]).any(dim=1).sum()
        totals[2] += len(y)
    return totals


def say(line: str) -> None:
    """One progress line on stderr, which Ray streams to the driver.

    Not print(): Ray Train V2 patches print in its workers to send each line to its logger as well
    as to the (wrapped) stream, and the driver then showed every line twice.
    """
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _worker_nodes(rank: int, world: int) -> list[str]:
    """The Ray node id of every rank (an all-gather), so a restarted group's placement is visible."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if world == 1:
        return [node]
    nodes: list = [None] * world
    torch.distributed.all_gather_object(nodes, node)
    return nodes


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    recipe: Recipe = recipe_from_dict(config["recipe"])
    data_config: dict = config["data_config"]
    sink = config.get("sink")  # rank 0 sends metrics here (MLflow); None: report to Ray only
    m, t, o = recipe.model, recipe.train, recipe.optim

    # (1) Ray: who and where this worker is.
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    # NHWC on CPUs too: a quarter-width training step at 128 px ran 1.74x faster per thread than NCHW
    # (65 -> 113 images/s, batch 16, torch 2.13, this 2-core machine).
    channels_last = t.channels_last
    torch.manual_seed(t.seed + rank)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu and t.bf16 else contextlib.nullcontext()

    # Data: this worker's split of the shards; every rank takes the same number of full batches.
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if config.get("has_val") else None
    steps = steps_per_epoch(config["num_train_samples"], world_size=world, batch_size=t.batch_size)
    if steps == 0 and t.epochs > 0:
        raise ValueError(f"{config['num_train_samples']} training images give no full batch of {t.batch_size} on each of {world} workers")
    schedule = [list(p) for p in recipe.data.resolution_schedule] or m.resolution

    # Model, with the running average the paper evaluates.
    model = inception_v3(num_classes=len(data_config["classes"]), aux_logits=m.aux_logits, resolution=m.variant, width=m.width, dropout=m.dropout, bn_momentum=m.bn_momentum)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # The decay per optimiser step that keeps optim.ema_decay's horizon in images at this global batch.
    ema_per_step = step_decay(o.ema_decay, global_batch=t.batch_size * world, reference_batch=o.ema_reference_batch)
    ema = ModelEma(model, ema_per_step) if o.ema_decay > 0 else None

    # Optimiser and schedule: optim.base_lr per optim.base_batch images, scaled to the global batch unless given.
    base_lr = o.lr or scaled_lr(t.batch_size * world, base_lr=o.base_lr, base_batch=o.base_batch)
    optimizer = RMSpropTF(param_groups_weight_decay(model, o.weight_decay), lr=base_lr, alpha=o.alpha, momentum=o.momentum, eps=o.eps)

    def lr_at(step: int) -> float:
        return learning_rate(step, steps_per_epoch=max(steps, 1), base_lr=base_lr, decay_rate=o.decay_rate, decay_epochs=o.decay_epochs, warmup_epochs=o.warmup_epochs, floor=o.lr_floor)

    # (2) Ray: resume from the last checkpoint after a worker failure or a rerun of the same run.
    epoch, epoch_step, step = 0, 0, 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as folder:
            state = checkpoint.load(folder, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        epoch, epoch_step, step = state["epoch"], state["epoch_step"], state["step"]
        if rank == 0:
            say(f"resumed from a checkpoint at epoch {epoch}, step {step}")
    elif config.get("init_checkpoint"):
        # Warm start (incept retrain, retrain.warm_start): weights only, from the averaged model that
        # was evaluated and registered; the optimiser, the schedule and the average start afresh.
        # A resumed run skips this: its own checkpoint already holds the warm-started weights.
        # A URI with its storage options (the endpoint), so any node opens it; tensors only (see checkpoint.load).
        state = checkpoint.load(config["init_checkpoint"], map_location=device)
        model.load_state_dict(state["ema"]["module"] if state.get("ema") else state["model"])
        ema = ModelEma(model, ema_per_step) if o.ema_decay > 0 else None
        if rank == 0:
            say(f"warm start from {config['init_checkpoint']}")

    # (3) Ray: wrap in DDP (and compile); the bare `model` is what checkpoints and the registry get.
    train_model = ray.train.torch.prepare_model(model, move_to_device=False)
    where = _worker_nodes(rank, world)
    if rank == 0:
        say("worker group: " + ", ".join(f"rank {r} on node {node}" for r, node in enumerate(where)))
    if t.compile:
        train_model = torch.compile(train_model)

    def report(metrics: dict, *, epoch_done: int, in_epoch: int) -> None:
        # (4) Ray: a barrier; rank 0 attaches the checkpoint, written before anything else can fail.
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                checkpoint.save(folder, checkpoint.training_state(model=model, ema=ema, optimizer=optimizer, epoch=epoch_done, epoch_step=in_epoch,
                                                                  step=step, recipe=asdict(recipe), data_config=data_config))
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved)

    if t.epochs == 0 and resumed is None:
        report({"epoch": 0, "step": 0}, epoch_done=0, in_epoch=0)  # the untrained model, so a run always has a checkpoint

    # The input feed: batches assembled ahead in pinned memory and copied on a side stream (GPU);
    # colour distortion here when data.color_on is device, JPEG decoding when data.decode_on is gpu.
    feed = Feed(device=device, channels_last=channels_last, color=recipe.data.color and recipe.data.color_on == "device", seed=t.seed, rank=rank)
    warned_through = -1

    def warn_nonfinite(steps: tuple[int, int], loss: float) -> None:
        # Each window once: after_step's reads and the epoch's own last read can name the same one.
        nonlocal warned_through
        first, last = steps
        if last >= first and not math.isfinite(loss) and last > warned_through:
            warned_through = last
            say(f"warning: non-finite loss in steps {first}-{last}; updates whose gradient norm was not finite were skipped")

    run_start, images_done = time.perf_counter(), 0
    while epoch < t.epochs:
        resolution = resolution_at(epoch, schedule, minimum=min_input_size(m.variant))
        todo = steps - epoch_step
        batches = equal_batches(
            train_shard.iter_batches(batch_size=t.batch_size, batch_format="numpy", local_shuffle_buffer_size=recipe.data.shuffle_buffer or None, prefetch_batches=2),
            batch_size=t.batch_size,
            steps=todo,
        )

        def after_step(now: int, read: Callable[[], dict]) -> None:
            # Metrics are read (the host waits for the GPU) only to log them and before a checkpoint.
            nonlocal step, epoch_step
            step, epoch_step = now, epoch_step + 1
            checkpoint_due = bool(t.checkpoint_every_steps) and now % t.checkpoint_every_steps == 0 and epoch_step < steps
            log_due = rank == 0 and now % max(t.log_every_steps, 1) == 0
            if not (checkpoint_due or log_due):
                return
            metrics = read()
            if rank == 0:
                warn_nonfinite(metrics["steps"], metrics["loss"])
            if log_due and sink is not None:
                metrics.pop("steps")
                sink.log({**metrics, "images_per_s": metrics.pop("images_per_s_worker") * world, "resolution": resolution}, step=now)
            if checkpoint_due:
                report({"epoch": epoch, "step": now, "loss": metrics["loss"]}, epoch_done=epoch, in_epoch=epoch_step)

        stats = train_one_epoch(train_model, ema, batches, optimizer, optim=o, lr_at=lr_at, first_step=step, feed=feed, resolution=resolution, autocast=autocast, after_step=after_step)
        for window in stats.nonfinite if rank == 0 else ():
            warn_nonfinite(window, float("nan"))
        epoch, epoch_step = epoch + 1, 0
        metrics = {"epoch": epoch, "step": step, "train_loss": stats.loss, "images_per_s": stats.images * world / max(stats.seconds, 1e-9), "resolution": resolution}

        if val_shard is not None:
            totals = evaluate(ema.module if ema is not None else model, val_shard.iter_batches(batch_size=t.batch_size, batch_format="numpy", prefetch_batches=2), device=device, resolution=m.resolution, channels_last=channels_last, autocast=autocast)
            if world > 1:
                torch.distributed.all_reduce(totals)
            metrics.update(val_top1=float(totals[0] / totals[2].clamp(min=1)), val_top5=float(totals[1] / totals[2].clamp(min=1)))

        images_done += stats.images * world
        if rank == 0:
            rate = images_done / (time.perf_counter() - run_start)
            eta = (t.epochs - epoch) * steps * t.batch_size * world / max(rate, 1e-9)
            val = f" | val top1 {metrics['val_top1']:.3f} top5 {metrics['val_top5']:.3f}" if "val_top1" in metrics else ""
            say(f"epoch {epoch}/{t.epochs} | loss {stats.loss:.3f}{val} | {metrics['images_per_s']:.0f} img/s | ETA {_format_eta(eta)}")
            if sink is not None:
                sink.log({k: v for k, v in metrics.items() if k not in ("epoch", "step")}, step=step)
        report(metrics, epoch_done=epoch, in_epoch=0)
