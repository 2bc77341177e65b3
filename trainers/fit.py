"""Wiring the per-worker loop into a Ray Train `TorchTrainer`. The driver only builds configs and calls fit().

Resuming: Ray Train V2 resumes a run that is started again with the same `RunConfig(storage_path,
name)`; the loop then finds the last checkpoint with `ray.train.get_checkpoint()` (REFERENCE.md:
`resume_from_checkpoint` and `Trainer.restore` raise in V2).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from pipelines import manifest
from pipelines.stream import eval_dataset, train_dataset
from trainers.config import Recipe
from trainers.loop import train_loop_per_worker

# Passed to every worker so that a worker on another node reaches the same tracking server.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def forwarded_env() -> dict[str, str]:
    """The FORWARDED_ENV variables set in this process, for a Ray runtime_env's env_vars."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


@dataclass
class FitResult:
    checkpoint: str  # folder (local path or URI) of the last checkpoint
    metrics: dict  # rank 0's last reported metrics
    run_path: str  # the Ray Train run's folder under storage_path


def data_config(recipe: Recipe, train_manifest: dict) -> dict:
    """What the model needs to see images as it was trained: travels into checkpoints and the registry."""
    from trainers.inception_v3 import data_config as model_data_config

    config = model_data_config(recipe.model.variant)
    classes = list(train_manifest["classes"])
    words = train_manifest.get("words", {})  # wnid -> words; the data config keeps a list in label order, like `classes`
    config.update(
        input_size=recipe.model.resolution,
        resolution=recipe.model.resolution,
        crop_fraction=recipe.data.crop_fraction,
        classes=classes,
        words=[words.get(wnid, wnid) for wnid in classes],
    )
    return config


def fit(recipe: Recipe, *, run_name: str, storage_path: str, sink=None, init_checkpoint: str | None = None) -> FitResult:
    """Train `recipe` as Ray Train run `run_name`; `init_checkpoint`: a checkpoint folder whose (EMA)
    weights a fresh run starts from instead of random ones (warm start; see the loop)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    t = recipe.train
    train_manifest = manifest.read(recipe.data.train)
    datasets = {
        "train": train_dataset(
            recipe.data.train,
            resolution=recipe.model.resolution,
            area=recipe.data.area,
            ratio=recipe.data.ratio,
            flip=recipe.data.flip,
            color=recipe.data.color,
        )
    }
    if recipe.data.val:
        datasets["val"] = eval_dataset(recipe.data.val, resolution=recipe.model.resolution, crop_fraction=recipe.data.crop_fraction)

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "recipe": asdict(recipe),
            "data_config": data_config(recipe, train_manifest),
            "num_train_samples": train_manifest["num_samples"],
            "has_val": "val" in datasets,
            "sink": sink,
            "init_checkpoint": init_checkpoint,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            worker_runtime_env={"env_vars": forwarded_env()},
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name} ended without a checkpoint")
    return FitResult(checkpoint=result.checkpoint.path, metrics=dict(result.metrics or {}), run_path=result.path)
