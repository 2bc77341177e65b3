"""The training input feed: host batches become model input on the device while the last step runs.

    host, a thread `depth` batches ahead          side stream              the step's stream
    batch (uint8 images, or JPEG bytes + crop      copy to the device       decode + crop + flip (data.decode_on: gpu)
    boxes) -> colour draws for (seed, rank, step),  (non_blocking, from      -> colour (data.color_on: device)
    rows grouped by ordering -> pinned memory       pinned memory)           -> [-1, 1] -> resize (progressive)

Why: on an H100 the loop fed by our own loader reached 59-73% of the bare training step
(docs/benchmarks.md, Loader): the next batch was re-cut and copied from pageable memory while the
GPU waited, and the CPU colour distortion bounded the loader. Here the re-cut and the copy into
pinned memory happen in a thread, the copy to the device on a side stream, and colour (and
optionally decoding) on the device.

On a CPU device there is nothing to overlap with (the step uses every core): no thread, no
pinning, no stream; the batch is used where it is.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from trainers import color
from trainers.inception_v3 import normalize, normalize_unit

T = TypeVar("T")


@dataclass(frozen=True)
class Feed:
    """How this worker turns host batches into model input."""

    device: torch.device
    channels_last: bool = True
    color: bool = False  # TF colour distortion on the device (data.color with data.color_on: device)
    seed: int = 0  # colour draws come from (seed, rank, global step): a resumed run repeats them
    rank: int = 0
    depth: int | None = None  # batches assembled ahead by a thread; None: 2 on CUDA, 0 (no thread) elsewhere

    @property
    def ahead(self) -> int:
        return self.depth if self.depth is not None else (2 if self.device.type == "cuda" else 0)


@dataclass
class Batch:
    """One training batch on the host or the device. Rows are in colour-group order when colour is on."""

    labels: torch.Tensor  # int64 (N,)
    images: torch.Tensor | None = None  # uint8 N x H x W x 3, cropped on the CPU
    # data.decode_on: gpu: the JPEG bytes with the crop box (left, top, width, height) and flip
    # each CPU worker drew; these stay on the host (nvJPEG reads host bytes; boxes drive slicing).
    jpegs: np.ndarray | None = None
    boxes: np.ndarray | None = None
    flips: np.ndarray | None = None
    color_params: torch.Tensor | None = None  # float32 (N, 4), trainers.color.PARAM_COLUMNS
    color_groups: tuple = field(default_factory=tuple)  # (ordering, start, stop): host ints, so no sync

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.labels, self.images, self.color_params) if t is not None]

    def to(self, device: torch.device, *, non_blocking: bool = False) -> Batch:
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(self, labels=move(self.labels), images=move(self.images), color_params=move(self.color_params))


def assemble(batch: dict, *, step: int, feed: Feed) -> Batch:
    """A loader batch (numpy columns: "image" and "label", or "jpg", "box", "flip" and "label") as a host Batch.

    With colour on, the rows are reordered so each of TF's four op orderings is one contiguous
    slice (trainers.color): the order of rows in a batch means nothing to the loss.
    """
    n = len(batch["label"])
    order, params, groups = None, None, ()
    if feed.color:
        draws = color.draw(n, seed=feed.seed, rank=feed.rank, step=step)
        order, groups = draws.order, draws.groups
        params = _host(draws.params, None, pin=feed.device.type == "cuda")
    pin = feed.device.type == "cuda"
    if "image" in batch:
        return Batch(labels=_host(batch["label"], order, pin=pin), images=_host(batch["image"], order, pin=pin),
                     color_params=params, color_groups=groups)

    def rows(array):
        array = np.asarray(array)
        return array if order is None else array[order]

    return Batch(labels=_host(batch["label"], order, pin=pin), jpegs=rows(batch["jpg"]), boxes=rows(batch["box"]),
                 flips=rows(batch["flip"]), color_params=params, color_groups=groups)


def _host(array: np.ndarray, order: np.ndarray | None, *, pin: bool) -> torch.Tensor:
    """`array` (rows in `order`) as a tensor; in pinned memory when a CUDA device copies from it.

    One copy either way: straight into the pinned buffer with np.take / np.copyto, which also
    reads Ray's read-only arrays without torch's warning about them.
    """
    array = np.asarray(array)
    if array.dtype == np.int32 or array.dtype.kind in "iu" and array.dtype != np.uint8:
        array = array.astype(np.int64, copy=False)
    if not pin:
        rows = array if order is None else np.take(array, order, axis=0)
        return torch.from_numpy(np.require(rows, requirements="W"))
    out = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype, pin_memory=True)
    if order is None:
        np.copyto(out.numpy(), array)
    else:
        np.take(array, order, axis=0, out=out.numpy())
    return out


def ahead(items: Iterable[T], depth: int) -> Iterator[T]:
    """`items`, produced by a background thread up to `depth` ahead of the consumer.

    An exception in the producer is raised here, after the items before it. Closing this
    generator (the consumer stopped early, or failed) stops the producer after at most one more
    item and closes `items` in its thread.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                ready.put((item, None))
                if stop.is_set():
                    return
            ready.put((end, None))
        except BaseException as err:  # noqa: BLE001 -- re-raised in the consumer, whatever it is
            ready.put((end, err))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="incept-feed", daemon=True)
    thread.start()
    try:
        while True:
            item, err = ready.get()
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue; after this it can put at most once more, into
        # a queue with room, and then sees `stop`.
        while True:
            try:
                ready.get_nowait()
            except queue.Empty:
                break


def device_batches(batches: Iterable[dict], feed: Feed, *, first_step: int) -> Iterator[Batch]:
    """`batches` as Batches on the device, the one for global step `first_step` first."""
    host: Iterable[Batch] = (assemble(b, step=first_step + i, feed=feed) for i, b in enumerate(batches))
    if feed.ahead:
        host = ahead(host, feed.ahead)
    if feed.device.type != "cuda":
        for batch in host:
            yield batch if feed.device.type == "cpu" else batch.to(feed.device)
        return
    side = torch.cuda.Stream(feed.device)
    main = torch.cuda.current_stream(feed.device)
    for batch in host:
        # The copy runs on the side stream while the GPU still executes the previous step (the
        # host is ahead of it: nothing in a step waits for the GPU); the step's stream waits for
        # the copy only, and record_stream keeps the allocator from reusing the memory early.
        with torch.cuda.stream(side):
            on_device = batch.to(feed.device, non_blocking=True)
        main.wait_stream(side)
        for t in on_device.tensors():
            t.record_stream(main)
        yield on_device


def model_input(batch: Batch, feed: Feed, *, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A device Batch -> (normalised float N x 3 x R x R, channels_last where asked; int64 labels)."""
    if batch.images is not None:
        images = batch.images
    else:
        from trainers import decode  # torchvision on GPU clusters (the `gpu` extra); only this path needs it

        # Cropped straight to this epoch's resolution: no second resize under progressive resizing.
        images = decode.decode_batch({"jpg": batch.jpegs, "box": batch.boxes, "flip": batch.flips}, feed.device, resolution=resolution)
    if batch.color_params is not None:
        # [0, 1] for the colour ops, as TF's distort_color takes them; the permute is a view whose
        # memory is channels_last already, and float() keeps that layout.
        x = images.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)
        x = normalize_unit(color.distort(x, batch.color_params, batch.color_groups))
        if not feed.channels_last:
            x = x.contiguous()
    else:
        x = normalize(images, channels_last=feed.channels_last)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        # Progressive resizing on the device: the pipeline crops at the final resolution once.
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x, batch.labels
