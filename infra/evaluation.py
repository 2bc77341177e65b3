"""`incept evaluate`: multi-crop evaluation of a checkpoint or a registered version.

MODEL is a checkpoint folder (a path that exists) or a registry reference (`inception-v3@champion`,
`inception-v3/3`); with a reference the metrics are written to that model version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from infra import registry, tracking
from infra.ray_runtime import init_ray
from trainers.evaluate import CheckpointModel, evaluate_shards
from trainers.fit import forwarded_env


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
    if os.path.exists(model):
        path = os.path.abspath(model)
        return CheckpointModel(path if os.path.isfile(os.path.join(path, "state.pt")) else _latest_checkpoint(path)), None
    tracking.connect()
    ref = registry.resolve(model)  # an unknown name or alias fails here, with what exists
    return RegisteredModel(f"{ref.name}/{ref.version}", tracking.tracking_uri()), ref


def _latest_checkpoint(run_folder: str) -> str:
    """A Ray Train run folder -> its newest checkpoint_* folder."""
    from pipelines.errors import UserError

    found = sorted(d for d in os.listdir(run_folder) if d.startswith("checkpoint_") and os.path.isfile(os.path.join(run_folder, d, "state.pt")))
    if not found:
        raise UserError(f"{run_folder} holds no training checkpoint (state.pt): pass a checkpoint folder or a registry reference")
    return os.path.join(run_folder, found[-1])


def evaluate_model(model: str, shards: str, crops: list, *, batch_size: int = 16, concurrency: int = 0, use_gpu: bool = False) -> dict:
    """Metrics for `model` on `shards`; written to the model version when `model` is a registry reference."""
    loader, ref = loader_for(model)
    init_ray()
    metrics = evaluate_shards(loader, shards, crops, batch_size=batch_size, concurrency=concurrency, use_gpu=use_gpu,
                              env_vars=forwarded_env())
    if ref is not None:
        registry.set_version_metrics(f"{ref.name}/{ref.version}", metrics)
    return {"model": model, "version": ref.version if ref else None, "shards": shards, "metrics": metrics}
