"""Wiring the per-worker loop into a Ray Train `TorchTrainer`. The driver only builds configs and calls fit().

Resuming: Ray Train V2 resumes a run that is started again with the same `RunConfig(storage_path,
name)`; the loop then finds the last checkpoint with `ray.train.get_checkpoint()` (REFERENCE.md:
`resume_from_checkpoint` and `Trainer.restore` raise in V2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipelines import manifest, storage
from pipelines.stream import eval_dataset, train_dataset
from trainers.config import Recipe
from trainers.loop import train_loop_per_worker


@dataclass
class FitResult:
    checkpoint: str  # folder of the last checkpoint: a local path, or a URI with the storage's options
    metrics: dict  # rank 0's last reported metrics
    run_path: str  # the Ray Train run's folder under storage_path (same form)


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


def fit(recipe: Recipe, *, run_name: str, storage_path: str, sink=None, init_checkpoint: str | None = None,
        worker_env: dict[str, str] | None = None) -> FitResult:
    """Train `recipe` as Ray Train run `run_name`; `init_checkpoint`: a checkpoint folder whose (EMA)
    weights a fresh run starts from instead of random ones (warm start; see the loop).

    `storage_path`: a local folder or an object-store URI. Ray Train gets the filesystem itself
    (`storage_filesystem`, with the scheme-less path it then wants), so workers on every node
    write checkpoints to the same endpoint. `worker_env`: variables for the workers' runtime_env;
    Ray shows it to anyone who can list the cluster's actors, so never a secret.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    t = recipe.train
    location = storage.locate(storage_path)
    train_manifest = manifest.read(recipe.data.train)
    datasets = {
        "train": train_dataset(
            recipe.data.train,
            resolution=recipe.model.resolution,
            area=recipe.data.area,
            ratio=recipe.data.ratio,
            flip=recipe.data.flip,
            # Colour on the CPU workers only where asked; otherwise the training device does it (trainers/feed.py).
            color=recipe.data.color and recipe.data.color_on == "cpu",
            decode=recipe.data.decode_on == "cpu",
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
            placement_strategy=t.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=location.path,
            storage_filesystem=None if location.is_local else location.fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.num_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            worker_runtime_env={"env_vars": dict(worker_env or {})},
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_name} ended without a checkpoint")
    # Ray Train returns scheme-less paths on the storage filesystem (REFERENCE.md): rebuild URIs.
    return FitResult(
        checkpoint=storage.uri_for(location, result.checkpoint.path),
        metrics=dict(result.metrics or {}),
        run_path=storage.uri_for(location, result.path),
    )
