"""Streaming shards back for training and evaluation, as Ray Data datasets.

    read_webdataset (raw bytes, shard order shuffled each epoch)
      -> map_batches(train_transform | eval_transform)   decode, crop, flip (and colour, data.color_on: cpu) on CPU workers
         (data.decode_on: gpu: train_crop_transform, which only draws the crops and ships the JPEG bytes)
      -> per worker: local shuffle buffer -> `equal_batches` -> trainers.feed -> the device

One Ray task per shard: the read and the transform fuse into one operator, so JPEG bytes never go
through the object store. Ray Data fuses a read with `map_batches` only when the map has no
`batch_size` (the read may change row counts) and the read is not split further (Ray splits the
output of a few large files into ~10 blocks each to reach its target parallelism, and split reads
never fuse). So the read gets one block per shard (`override_num_blocks`) and `InChunks` cuts each
shard into `batch_rows`-row calls of the transform inside the task. Measured with
bench/loader.py on 2 cores (docs/benchmarks.md, Loader): 205 -> 267 images per CPU-second, 105 ->
156 images/s per core; the unfused wiring was no faster than a plain DataLoader. The price: a
task's output leaves in blocks of up to DataContext.target_max_block_size (128 MiB, about 500
images at 299), not per `batch_rows`, so the first batch of an epoch waits for that much work.

Equal batch counts: DDP hangs when one rank runs out of batches before the others
(ray-project/ray#66085: the local shuffle buffer can emit short batches mid-epoch). Ray Train's
split gives every rank the same number of rows; `equal_batches` re-cuts whatever batches arrive
into full ones and stops after exactly `steps` of them, so every rank takes the same number of
steps whatever the buffer does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pipelines.transforms import eval_transform, train_crop_transform, train_transform


def slices(batch: dict, rows: int) -> Iterator[dict]:
    """Consecutive `rows`-row slices of a column batch (the last may be shorter)."""
    n = len(next(iter(batch.values())))
    for start in range(0, n, rows):
        yield {k: v[start : start + rows] for k, v in batch.items()}


@dataclass(frozen=True)
class InChunks:
    """A map_batches UDF: `fn` on consecutive `rows`-row slices of whatever block arrives, each yielded.

    Keeps the transform's batches small (memory, and the first batch arrives early) while the
    map itself takes whole blocks, which is what lets Ray fuse it with the read.
    """

    fn: Callable[[dict], dict]
    rows: int

    def __call__(self, batch: dict) -> Iterator[dict]:
        for part in slices(batch, self.rows):
            yield self.fn(part)


def read_shards(uri: str, *, shuffle: bool, **remote_args):
    """The shards at `uri` as raw samples, one block per shard, for a map over whole blocks to fuse with.

    `remote_args` (num_cpus, num_gpus, runtime_env) must equal the fused map's: Ray fuses a read
    into a map only when both ask for the same.
    """
    import ray.data

    from pipelines import manifest, storage  # here: pyarrow, which a torch-only box running trainers.loop may lack

    location = storage.locate(uri)
    shards = manifest.shard_paths(location, manifest.read(uri))
    return ray.data.read_webdataset(
        shards,
        # The filesystem itself, not URIs: it pickles with its endpoint, so a reader on a node
        # without the driver's AWS_ENDPOINT_URL reads the same store.
        filesystem=location.fs,
        decoder=None,  # keep the JPEG bytes; False would still decode (REFERENCE.md)
        file_extensions=["tar"],  # never a temporary or the manifest
        shuffle="files" if shuffle else None,  # a new shard order on every execution (epoch)
        override_num_blocks=len(shards),  # one read task per shard, never split: see the module docstring
        **remote_args,
    )


def _read_and_map(uri: str, fn, *, shuffle: bool, batch_rows: int):
    # batch_size=None: the whole block (one shard) per call, so the map fuses with the read.
    return read_shards(uri, shuffle=shuffle).map_batches(InChunks(fn, batch_rows), batch_format="numpy", batch_size=None)


def train_dataset(uri: str, *, resolution: int, area, ratio, flip: bool, color: bool, decode: bool = True, batch_rows: int = 32):
    """Augmented training images as uint8 (R, R, 3) with int64 labels; reshuffled each epoch.

    decode False: the crops are drawn here but not cut; each row ships its JPEG bytes with the box
    and flip (pipelines.transforms.CropTransform), for a training GPU that decodes (data.decode_on: gpu).
    """
    if decode:
        transform = train_transform(resolution=resolution, area=tuple(area), ratio=tuple(ratio), flip=flip, color=color)
    else:
        transform = train_crop_transform(resolution=resolution, area=tuple(area), ratio=tuple(ratio), flip=flip)
    return _read_and_map(uri, transform, shuffle=True, batch_rows=batch_rows)


def eval_dataset(uri: str, *, resolution: int, crop_fraction: float = 0.875, batch_rows: int = 32):
    """Central-crop images (uint8) with labels, in shard order."""
    transform = eval_transform(resolution=resolution, crop_fraction=crop_fraction)
    return _read_and_map(uri, transform, shuffle=False, batch_rows=batch_rows)


def steps_per_epoch(num_samples: int, *, world_size: int, batch_size: int) -> int:
    """Full batches each rank can take per epoch: the split gives each rank num_samples // world_size rows."""
    return (num_samples // world_size) // batch_size


def equal_batches(batches: Iterable[dict[str, np.ndarray]], *, batch_size: int, steps: int) -> Iterator[dict[str, np.ndarray]]:
    """Exactly `steps` batches of exactly `batch_size` rows, re-cut from batches of any size.

    Raises RuntimeError if the input runs dry first: a hang in DDP would be worse.
    """
    if steps <= 0:
        return
    pending: list[dict[str, np.ndarray]] = []
    have = 0
    made = 0
    for batch in batches:
        n = len(next(iter(batch.values())))
        if n == 0:
            continue
        pending.append(batch)
        have += n
        while have >= batch_size:
            joined = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
            yield {k: v[:batch_size] for k, v in joined.items()}
            made += 1
            if made == steps:
                return
            rest = {k: v[batch_size:] for k, v in joined.items()}
            have -= batch_size
            pending = [rest] if have else []
    raise RuntimeError(f"the data ran out after {made} of {steps} batches of {batch_size}")
