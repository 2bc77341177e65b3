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

A model comes from a loader: a small picklable object with `load() -> (module, data_config)`,
where the module maps uint8 N x R x R x 3 to probabilities N x C (`trainers.serving.ServingModel`,
or the graph a registered version holds). `CheckpointModel` loads a training checkpoint; infra
provides one for registry references.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
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


class CropPredictor:
    """A Ray Data actor: one model, many images; returns per-image hits for each protocol."""

    def __init__(self, loader, protocols: list[str], use_gpu: bool = False, batch_size: int = 16):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
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
    def predict(self, batch: dict) -> dict:
        labels = np.array([int(c) for c in batch["cls"]], dtype=np.int64)
        out = {"label": labels}
        images = [Image.open(io.BytesIO(data)).convert("RGB") for data in batch["jpg"]]
        for name in self.protocols:
            cut = protocol(name)
            crops = [cut(image, self.resolution, self.crop_fraction) for image in images]
            counts = [len(c) for c in crops]
            probs = self.model(torch.from_numpy(np.concatenate(crops)).to(self.device)).float()
            mean = torch.stack([p.mean(dim=0) for p in probs.split(counts)])  # average over each image's crops
            top5 = mean.topk(min(5, mean.shape[1]), dim=1).indices.cpu().numpy()
            out[f"top1_{name}"] = top5[:, 0] == labels
            out[f"top5_{name}"] = (top5 == labels[:, None]).any(axis=1)
        return out


def evaluate_shards(loader, uri: str, crops: list, *, batch_size: int = 16, concurrency: int = 0, use_gpu: bool = False, env_vars: dict | None = None) -> dict[str, float]:
    """top1_Ncrop / top5_Ncrop (fractions) for each protocol N, over every sample in the shards at `uri`.

    `concurrency`: actors, one model each; 0: one per CPU of the cluster, or per GPU with
    `use_gpu`. Never more than one per shard (a shard is one block).
    """
    import ray.data

    names = [str(c) for c in crops]
    for name in names:
        protocol(name)  # an unknown protocol fails here, before Ray starts work
    if concurrency < 0:
        raise UserError(f"concurrency must be at least 0 (0: one actor per CPU or GPU), got {concurrency}")
    data = manifest.read(uri)
    devices = int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 0))
    if use_gpu and devices == 0:
        raise UserError("the Ray cluster has no GPU: evaluate without --gpu (train.use_gpu=false), or on a cluster with GPUs")
    concurrency = max(1, min(concurrency or devices, len(data["shards"])))
    remote_args = {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0, **({"runtime_env": {"env_vars": env_vars}} if env_vars else {})}
    ds = read_shards(uri, shuffle=False, **remote_args).map_batches(
        CropPredictor,
        fn_constructor_kwargs={"loader": loader, "protocols": names, "use_gpu": use_gpu, "batch_size": batch_size},
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
