"""`incept train`: config -> MLflow run -> Ray Train -> multi-crop evaluation -> registered challenger.

The driver does what only one process may do: it opens (or, on a rerun, finds) the MLflow run,
fits, evaluates the final EMA model, and registers it once. The checkpoint is written before any
of that can fail; if the tracking server is gone at the end, the run prints the command that
finishes the job later (the same command: a finished Ray run resumes at its end).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from infra import charts, registry, tracking
from infra.config import Config
from infra.evaluation import val_set
from infra.metrics_sink import MlflowSink
from infra.ray_runtime import alive_nodes, init_ray
from pipelines import manifest, storage
from pipelines.errors import UserError
from trainers import checkpoint
from trainers.evaluate import CheckpointModel, evaluate_shards
from trainers.fit import fit
from trainers.serving import ServingModel

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
RUN_NAME_TAG = "incept.run_name"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def ray_job_id() -> str:
    """The Ray job's submission id when this driver runs as a Ray job (incept submit), else ""."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id", "") if raw else ""
    except json.JSONDecodeError:
        return ""


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


def _open_run(config: Config, run_name: str, tags: dict) -> str:
    """The MLflow run of `run_name`: found again on a rerun (resume), else created with the config as params."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment_id = tracking.get_or_create_experiment(config.registry.experiment)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)
    if found:
        log.info("continuing MLflow run %s of %s", found[0].info.run_id, run_name)
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    params = _flatten(config.to_dict())
    items = list(params.items())
    from mlflow.entities import Param

    for i in range(0, len(items), 100):  # the REST API takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in items[i : i + 100]])
    client.log_dict(run.info.run_id, config.to_dict(), "config.json")
    return run.info.run_id


def _history(run_id: str, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient()
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def check_storage_reaches_workers(location: storage.Location, *, shared: bool) -> None:
    """A local storage_path on a multi-node cluster: refused unless `train.storage_shared` says every node mounts it.

    Workers on other nodes would write checkpoints to their own disks, and a restarted group (or
    the evaluation) would not find them.
    """
    if not location.is_local or shared:
        return
    nodes = alive_nodes()
    if nodes > 1:
        raise UserError(
            f"train.storage_path {location.path} is a local folder and the Ray cluster has {nodes} nodes, which "
            "cannot all see it: use object storage (train.storage_path=s3://BUCKET/runs), or set "
            "train.storage_shared=true if every node mounts it at that path (NFS)"
        )


def train(config: Config, *, config_path: str | None = None, init_checkpoint: str | None = None) -> dict:
    """`init_checkpoint`: warm start from that checkpoint's weights (incept retrain); recorded as a tag."""
    run_name = config.train.run_name or f"incept-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    location = storage.locate(config.train.storage_path or str(tracking.workdir() / "runs"))
    storage.check(location)  # an unreachable endpoint or a missing bucket fails now, not after the run
    for split in ("train", "val"):
        if getattr(config.data, split):
            manifest.read(getattr(config.data, split))  # a missing or bad manifest fails before anything starts
        elif split == "train":
            raise UserError("data.train is empty: set it to the training shards (data.train=PATH or in the config file)")
    train_manifest = manifest.read(config.data.train)

    uri = tracking.connect()
    init_ray()
    check_storage_reaches_workers(location, shared=config.train.storage_shared)
    tags = {"data_fingerprint": train_manifest["fingerprint"], "config_sha256": config.sha256(), "git_commit": git_commit(), "ray_job_id": ray_job_id()}
    if init_checkpoint:
        tags["warm_start_checkpoint"] = init_checkpoint
    run_id = _open_run(config, run_name, tags)
    print(f"run {run_name} (MLflow run {run_id}); resume after an interruption with: incept train --config {config_path or 'FILE'} train.run_name={run_name}", file=sys.stderr, flush=True)

    # The workers' tracking URI carries no user:password: credentials come from each node's environment.
    result = fit(config.recipe, run_name=run_name, storage_path=location.uri, sink=MlflowSink(tracking.strip_userinfo(uri), run_id),
                 init_checkpoint=init_checkpoint, worker_env=tracking.worker_env())
    outcome = {"run_id": run_id, "run_name": run_name, "checkpoint": result.checkpoint, "train_metrics": result.metrics, "model_version": None, "metrics": {}}

    resume_hint = f"incept train --config {config_path or 'FILE'} train.run_name={run_name}"
    try:
        state = checkpoint.load(result.checkpoint)
        val = {}
        if config.data.val and config.eval.crops:
            val = val_set(config.data.val)  # the set the metrics come from, tagged on the version with them
            # The checkpoint's URI, not a folder of this node: actors on any node open it.
            outcome["metrics"] = evaluate_shards(CheckpointModel(result.checkpoint), config.data.val, config.eval.crops, batch_size=config.eval.batch_size,
                                                 max_crops_per_forward=config.eval.max_crops_per_forward, concurrency=config.eval.concurrency,
                                                 use_gpu=config.train.use_gpu, env_vars=tracking.worker_env())
        tracking.connect()
        _log_results(run_id, outcome["metrics"])
        if config.registry.register:
            data_config = state["data_config"]
            serving = ServingModel(checkpoint.build_model(state), mean=data_config["mean"], std=data_config["std"])
            r = data_config["resolution"]
            example = np.random.default_rng(0).integers(0, 256, (2, r, r, 3), dtype=np.uint8)
            version = registry.register(
                model=serving, input_example=example, metadata=data_config, metrics=outcome["metrics"],
                tags={**tags, "checkpoint": result.checkpoint, "run_name": run_name}, run_id=run_id, model_name=config.registry.model_name, **val,
            )
            outcome["model_version"] = version.version
        from mlflow import MlflowClient

        MlflowClient().set_terminated(run_id, "FINISHED")
    except UserError as err:
        raise UserError(f"{err} -- the checkpoint is kept at {result.checkpoint}; register it later with: {resume_hint}") from None
    return outcome


def _log_results(run_id: str, metrics: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        history = _history(run_id, ["loss", "train_loss", "lr", "grad_norm", "val_top1", "val_top5"])
        client.log_artifact(run_id, str(charts.training_curves(history, Path(tmp) / "training_curves.png")))
        if metrics:
            client.log_artifact(run_id, str(charts.crop_comparison(metrics, Path(tmp) / "crop_protocols.png")))
