"""`incept evaluate`: multi-crop evaluation of a checkpoint or a registered version.

MODEL is a checkpoint folder (a path that exists) or a registry reference (`inception-v3@champion`,
`inception-v3/3`); with a reference the metrics become that model version's, tagged with the
validation set they came from (`val_set`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from infra import registry, tracking
from infra.ray_runtime import init_ray
from pipelines import manifest, storage
from pipelines.errors import UserError
from trainers.checkpoint import STATE_FILE
from trainers.evaluate import CheckpointModel, evaluate_shards


@dataclass(frozen=True)
class RegisteredModel:
    """Loads a registered version inside an evaluation actor (any node: it carries the tracking URI)."""

    ref: str
    tracking_uri: str

    def load(self):
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri
        tracking.configure()
        module, metadata = registry.load(self.ref)
        return module, metadata


def loader_for(model: str):
    """A checkpoint folder or run folder (local path or storage URI), else a registry reference."""
    if storage.has_scheme(model) or os.path.exists(model):
        return CheckpointModel(checkpoint_folder(model)), None
    tracking.connect()
    ref = registry.resolve(model)  # an unknown name or alias fails here, with what exists
    # Without user:password: the actor's node has its own credentials (tracking.WORKER_ENV).
    return RegisteredModel(f"{ref.name}/{ref.version}", tracking.strip_userinfo(tracking.tracking_uri())), ref


def checkpoint_folder(path: str) -> str:
    """A checkpoint folder as given, or a Ray Train run folder's newest checkpoint_* folder; as a URI any node opens."""
    location = storage.locate(path)
    storage.check(location)
    if storage.exists(location, STATE_FILE):
        return location.uri
    found = [d for d in storage.list_folders(location) if d.startswith("checkpoint_") and storage.exists(location.child(d), STATE_FILE)]
    if not found:
        raise UserError(f"{location.uri} holds no training checkpoint ({STATE_FILE}): pass a checkpoint folder or a registry reference")
    return location.child(sorted(found)[-1]).uri


def val_set(shards: str) -> dict[str, str]:
    """The validation set an evaluation runs on, as `registry.register` and `set_version_metrics` take it:
    its manifest's fingerprint and its URI as any node opens it (an absolute path, or a storage URI
    with its endpoint; never credentials, which `storage.locate` refuses)."""
    return {"val_fingerprint": manifest.read(shards)["fingerprint"], "val_shards": storage.uri_of(storage.locate(shards))}


def evaluate_model(model: str, shards: str, crops: list, *, batch_size: int = 16, max_crops_per_forward: int = 0, concurrency: int = 0,
                   use_gpu: bool = False) -> dict:
    """Metrics for `model` on `shards`; the model version's metrics when `model` is a registry reference."""
    loader, ref = loader_for(model)
    init_ray()
    val = val_set(shards)  # a missing manifest fails here, before any actor starts
    metrics = evaluate_shards(loader, shards, crops, batch_size=batch_size, max_crops_per_forward=max_crops_per_forward,
                              concurrency=concurrency, use_gpu=use_gpu, env_vars=tracking.worker_env())
    if ref is not None:
        registry.set_version_metrics(f"{ref.name}/{ref.version}", metrics, **val)
    return {"model": model, "version": ref.version if ref else None, "shards": shards, **val, "metrics": metrics}
