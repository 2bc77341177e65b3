"""Multi-crop evaluation (paper section 9, table 4): a Ray Data job with one model per actor.

Each image is cut into its protocol's crops (`pipelines.crops`), the softmax probabilities are
averaged over the crops, and top-1 / top-5 are counted. Every sample of the shards is read exactly
once (no shuffle, no split); the driver sums the per-image results.

The read fuses into the actors, as the training stream's read fuses into its map (pipelines.stream):
one block per shard, and a map over whole blocks that cuts them into `batch_size` batches itself.
Unfused, the read ran as separate tasks that need CPUs of their own: an actor pool holding every
CPU starved them and waited forever (seen with 2 actors on 2 CPUs), so the pool had to stay one
actor short of the cluster. Fused, every CPU (or GPU) can hold a model; parallelism is at most one
actor per shard.

Crops go through the model at most `max_crops_per_forward` at a time, in chunks that may span
images: a batch of 32 images at 144 crops was one forward of 4,608 crops, about 64 GiB of fp32
activations at 299 px (14.2 MiB per crop, measured: docs/benchmarks.md, "Evaluation memory").
The crops are cut image by image as the chunks fill: besides the chunk's activations, only the
crops of the images that chunk spans are held, never the whole batch's.

A model comes from a loader: a small picklable object with `load() -> (module, data_config)`,
where the module maps uint8 N x R x R x 3 to probabilities N x C (`trainers.serving.ServingModel`,
or the graph a registered version holds). `CheckpointModel` loads a training checkpoint; infra
provides one for registry references.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipelines import manifest
from pipelines.crops import protocol
from pipelines.errors import UserError
from pipelines.stream import read_shards, slices
from trainers import checkpoint
from trainers.serving import ServingModel


@dataclass(frozen=True)
class CheckpointModel:
    """Loads the EMA weights of a training checkpoint folder: a local path, or a storage URI with its
    options, which an actor on any node opens (a local path only where every node sees it)."""

    path: str

    def load(self):
        state = checkpoint.load(self.path)
        config = state["data_config"]
        return ServingModel(checkpoint.build_model(state), mean=config["mean"], std=config["std"]), config


# Crops per forward when eval.max_crops_per_forward is 0, by device type; each crop is 299 x 299.
# Measured: an eval-mode, no_grad forward of the full-width serving module (fp32, NHWC, one
# thread) grows peak RSS by 14.2 MiB per crop (batches of 64 and 128: 919 and 1,829 MiB; the model
# and torch hold 0.35 GiB before it); docs/benchmarks.md, "Evaluation memory".
# - "cpu": one actor per core on a 24 GiB, 2-core machine. 24 GiB - 7.2 GiB (Ray's object store,
#   30% of memory by default) - 2 GiB (OS, raylet, GCS, driver) = 14.8 GiB for 2 actors, 7.4 GiB
#   each; less 0.35 GiB (torch and the model) and 0.25 GiB (32 decoded images, the crops of the
#   up to 3 images a chunk spans, the chunk's uint8 copy, the batch's probabilities) leaves
#   6.8 GiB, 490 crops. About half of that, 256 crops (3.6 GiB), leaves room for what one
#   measurement does not show (allocator fragmentation, oneDNN scratch) and costs no speed: one
#   thread gives 4.3-5.4 crops/s at any batch from 8 to 128.
# - "cuda": a 40 GB GPU. An ESTIMATE, no GPU was measured: the forward runs in fp32 there too (no
#   autocast in evaluation; the registered graph is fp32), so 14.2 MiB per crop as on the CPU,
#   doubled for cuDNN workspaces and the caching allocator: 28.4 MiB. 40 GB (37.2 GiB) - 1 GiB
#   (CUDA context, weights) = 36 GiB, 1,300 crops; 1,024 (28.4 GiB with the margin, 14.2 without).
DEFAULT_CROPS_PER_FORWARD = {"cpu": 256, "cuda": 1024}


def crops_per_forward(requested: int, device_type: str) -> int:
    """The crop limit per forward: `requested`, or the device's default for 0."""
    if requested < 0:
        raise UserError(f"max_crops_per_forward must be at least 0 (0: the device's default), got {requested}")
    return requested or DEFAULT_CROPS_PER_FORWARD[device_type]


def chunks(arrays: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The rows of `arrays`, in order, regrouped into arrays of `size` rows (the last may be shorter).

    A chunk may hold the end of one array and the start of the next; the arrays are consumed one
    at a time, so an iterator of crops is cut no further ahead than the chunk being filled.
    """
    pending, held = [], 0
    for array in arrays:
        start = 0
        while start < len(array):
            take = min(size - held, len(array) - start)
            pending.append(array[start : start + take])
            held += take
            start += take
            if held == size:
                yield np.concatenate(pending)
                pending, held = [], 0
    if pending:
        yield np.concatenate(pending)


class CropPredictor:
    """A Ray Data actor: one model, many images; returns per-image hits for each protocol.

    `max_crops_per_forward`: crops per model call (0: DEFAULT_CROPS_PER_FORWARD for the device).
    """

    def __init__(self, loader, protocols: list[str], use_gpu: bool = False, batch_size: int = 16, max_crops_per_forward: int = 0):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.max_crops = crops_per_forward(max_crops_per_forward, self.device.type)
        self.model, config = loader.load()
        self.model = self.model.to(self.device)
        self.resolution = int(config["resolution"])
        self.crop_fraction = float(config["crop_fraction"])
        self.protocols = [str(p) for p in protocols]

    def __call__(self, block: dict) -> Iterator[dict]:
        """A whole shard (the fused read's block) -> per-image hits, `batch_size` images at a time."""
        for batch in slices(block, self.batch_size):
            yield self.predict(batch)

    @torch.no_grad()
    def mean_probabilities(self, images: list[Image.Image], name: str) -> torch.Tensor:
        """N x C: each image's probabilities averaged over its crops of protocol `name`."""
        cut = protocol(name)
        counts = []

        def crops() -> Iterator[np.ndarray]:
            for image in images:
                crop = cut(image, self.resolution, self.crop_fraction)
                counts.append(len(crop))
                yield crop

        probs = torch.cat([self.model(torch.from_numpy(chunk).to(self.device)).float() for chunk in chunks(crops(), self.max_crops)])
        return torch.stack([p.mean(dim=0) for p in probs.split(counts)])  # average over each image's crops

    def predict(self, batch: dict) -> dict:
        labels = np.array([int(c) for c in batch["cls"]], dtype=np.int64)
        out = {"label": labels}
        images = [Image.open(io.BytesIO(data)).convert("RGB") for data in batch["jpg"]]
        for name in self.protocols:
            mean = self.mean_probabilities(images, name)
            top5 = mean.topk(min(5, mean.shape[1]), dim=1).indices.cpu().numpy()
            out[f"top1_{name}"] = top5[:, 0] == labels
            out[f"top5_{name}"] = (top5 == labels[:, None]).any(axis=1)
        return out


def evaluate_shards(loader, uri: str, crops: list, *, batch_size: int = 16, max_crops_per_forward: int = 0, concurrency: int = 0,
                    use_gpu: bool = False, env_vars: dict | None = None) -> dict[str, float]:
    """top1_Ncrop / top5_Ncrop (fractions) for each protocol N, over every sample in the shards at `uri`.

    `max_crops_per_forward`: crops per model call, whatever `batch_size` x the protocol's crops;
    0: the device's default (DEFAULT_CROPS_PER_FORWARD).
    `concurrency`: actors, one model each; 0: one per CPU of the cluster, or per GPU with
    `use_gpu`. Never more than one per shard (a shard is one block).
    """
    import ray.data

    names = [str(c) for c in crops]
    for name in names:
        protocol(name)  # an unknown protocol fails here, before Ray starts work
    if concurrency < 0:
        raise UserError(f"concurrency must be at least 0 (0: one actor per CPU or GPU), got {concurrency}")
    crops_per_forward(max_crops_per_forward, "cuda" if use_gpu else "cpu")  # a negative limit fails here, before Ray starts work
    data = manifest.read(uri)
    devices = int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 0))
    if use_gpu and devices == 0:
        raise UserError("the Ray cluster has no GPU: evaluate without --gpu (train.use_gpu=false), or on a cluster with GPUs")
    concurrency = max(1, min(concurrency or devices, len(data["shards"])))
    remote_args = {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0, **({"runtime_env": {"env_vars": env_vars}} if env_vars else {})}
    ds = read_shards(uri, shuffle=False, **remote_args).map_batches(
        CropPredictor,
        fn_constructor_kwargs={"loader": loader, "protocols": names, "use_gpu": use_gpu, "batch_size": batch_size,
                               "max_crops_per_forward": max_crops_per_forward},
        batch_size=None,  # whole blocks: a map with a batch size never fuses with a read
        batch_format="numpy",
        # One shard per actor at a time: otherwise the first actor to start queues every block
        # while the others are still loading the model (seen: 2 shards, 2 actors, 1 doing both).
        compute=ray.data.ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=1),
        **remote_args,
    )
    sums = {f"top{k}_{n}": 0 for n in names for k in (1, 5)}
    count = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        count += len(batch["label"])
        for key in sums:
            sums[key] += int(batch[key].sum())
    if count != data["num_samples"]:
        raise RuntimeError(f"evaluated {count} samples, the manifest of {uri} lists {data['num_samples']}")
    return {f"top{k}_{n}crop": sums[f"top{k}_{n}"] / max(count, 1) for n in names for k in (1, 5)}
