"""Multi-crop evaluation (paper section 9, table 4): a Ray Data job with one model per actor.

Each image is cut into its protocol's crops (`pipelines.crops`), the softmax probabilities are
averaged over the crops, and top-1 / top-5 are counted. Every sample of the shards is read exactly
once (no shuffle, no split); the driver sums the per-image results.

A model comes from a loader: a small picklable object with `load() -> (module, data_config)`,
where the module maps uint8 N x R x R x 3 to probabilities N x C (`trainers.serving.ServingModel`,
or the graph a registered version holds). `CheckpointModel` loads a training checkpoint; infra
provides one for registry references.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipelines import manifest
from pipelines.crops import protocol
from trainers import checkpoint
from trainers.serving import ServingModel


@dataclass(frozen=True)
class CheckpointModel:
    """Loads the EMA weights of a training checkpoint folder (local path)."""

    path: str

    def load(self):
        state = checkpoint.load(self.path)
        config = state["data_config"]
        return ServingModel(checkpoint.build_model(state), mean=config["mean"], std=config["std"]), config


class CropPredictor:
    """A Ray Data actor: one model, many images; returns per-image hits for each protocol."""

    def __init__(self, loader, protocols: list[str], use_gpu: bool = False):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model, config = loader.load()
        self.model = self.model.to(self.device)
        self.resolution = int(config["resolution"])
        self.crop_fraction = float(config["crop_fraction"])
        self.protocols = [str(p) for p in protocols]

    @torch.no_grad()
    def __call__(self, batch: dict) -> dict:
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


def evaluate_shards(loader, uri: str, crops: list, *, batch_size: int = 16, concurrency: int = 1, use_gpu: bool = False, env_vars: dict | None = None) -> dict[str, float]:
    """top1_Ncrop / top5_Ncrop (fractions) for each protocol N, over every sample in the shards at `uri`."""
    import ray.data

    names = [str(c) for c in crops]
    for name in names:
        protocol(name)  # an unknown protocol fails here, before Ray starts work
    data = manifest.read(uri)
    if not use_gpu:
        # CPU actors hold a CPU each for their lifetime; leave one for the read tasks, or the
        # pool waits forever on input that cannot be scheduled (seen with 2 actors on 2 CPUs).
        concurrency = max(1, min(concurrency, int(ray.cluster_resources().get("CPU", 2)) - 1))
    ds = ray.data.read_webdataset(manifest.shard_uris(uri, data), decoder=None, file_extensions=["tar"])
    ds = ds.map_batches(
        CropPredictor,
        fn_constructor_kwargs={"loader": loader, "protocols": names, "use_gpu": use_gpu},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_gpus=1 if use_gpu else 0,
        runtime_env={"env_vars": env_vars} if env_vars else None,
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
