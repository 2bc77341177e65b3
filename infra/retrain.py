"""`incept retrain`: one retraining cycle, ending in a promotion decision with its evidence.

    lock the work directory -> shard the source (resumable) -> same data as the champion? stop
    -> train a challenger -> evaluate the champion on the same validation shards -> decide

The rules, and why:
- One cycle per work directory at a time: an OS file lock (released when the holder dies),
  taken without waiting; a second cycle exits at once naming the holder. Two cycles would
  write the same shards and race to promote.
- The data fingerprint is the train manifest's `fingerprint` (shard hashes + class list).
  Sharding is resumable and deterministic, so an unchanged source costs one hash pass and gives
  the same fingerprint. Equal to the champion's `data_fingerprint` tag (and no `--force`): no
  training, "no new data".
- The training run's name is derived from the data fingerprint, the recipe and the warm-start
  checkpoint (unless `train.run_name` is given). A cycle that died mid-training resumes from
  its last checkpoint when it runs again; the same data and recipe never train twice, even
  with `--force` (change `train.seed` or set `train.run_name` to train afresh).
- A fair comparison: `incept train` evaluates the challenger on `data.val` with `eval.crops`
  right after fitting, and the champion is evaluated now on the same shards with the same
  crops. The champion's stored metrics may come from other data or protocols, so they are
  never reused. Both metric sets are written to their versions.
- Promote only if challenger - champion > margin on `retrain.metric` (no champion: promote).
  A tie is not a win. `registry.promote` moves champion -> previous-champion and writes the
  evidence; a refusal leaves the champion untouched and writes the reason to the challenger.
- Every cycle is an MLflow run in the experiment (tag `incept.kind=retrain`), decision and all,
  so "why is version 7 not serving?" has an answer even when nothing was trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra import registry, tracking
from infra.config import Config
from pipelines import storage
from pipelines.errors import UserError
from trainers.checkpoint import STATE_FILE

log = logging.getLogger(__name__)

LOCK_FILE = "retrain.lock"
HOLDER_FILE = "retrain.lock.holder.json"  # who holds the lock: beside it, since a contender's open may truncate the lock file
KIND_TAG = "incept.kind"
# Metrics are fractions of a finite validation set: k/n values whose difference can land a
# rounding error either side of the margin. A difference within this of the margin is a tie.
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Decision:
    promote: bool
    decision: str  # promoted | rejected | unchanged | skipped
    reason: str


def decide(metric: str, challenger: float, champion: float | None, margin: float) -> Decision:
    """Promote when there is no champion, or when challenger - champion > margin (a tie is no win)."""
    if champion is None:
        return Decision(True, "promoted", f"no champion yet ({metric} {challenger:.4f})")
    if challenger - champion - margin > TIE_TOLERANCE:
        return Decision(True, "promoted", f"{metric} {challenger:.4f} beats the champion's {champion:.4f} by more than the margin {margin:.4f}")
    return Decision(False, "rejected", f"{metric} {challenger:.4f} does not beat the champion's {champion:.4f} by more than the margin {margin:.4f}")


def default_workdir() -> Path:
    return tracking.workdir() / "retrain"


# --------------------------------------------------------------------------------------------
# The cycle lock


def _flock_holder_pid(path: Path) -> int | None:
    """The pid holding an flock on `path`, from /proc/locks (Linux, this machine only), or None."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 12345 fe:00:2171507 0 EOF"; "->" marks a waiter
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].isdigit():
            return int(fields[4])
    return None


def _describe_holder(workdir: Path) -> str:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # no record, or a torn one
        h = json.loads((workdir / HOLDER_FILE).read_text())
        return f"pid {h['pid']} on {h['host']} ({h['user']}), since {h['since']}: {h['command']}"
    pid = _flock_holder_pid(workdir / LOCK_FILE)
    return f"pid {pid} on {socket.gethostname()}" if pid else "a process on another machine, or one that left no record"


@contextlib.contextmanager
def cycle_lock(workdir: Path) -> Iterator[None]:
    """Hold `<workdir>/retrain.lock` for the cycle; a second holder gets a UserError at once."""
    from filelock import FileLock, Timeout

    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the retrain work directory {workdir}: {err.strerror}") from None
    lock = FileLock(str(workdir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"another retrain cycle holds {workdir / LOCK_FILE} ({_describe_holder(workdir)}); "
            "wait for it to finish, or give this one its own --workdir"
        ) from None
    holder = workdir / HOLDER_FILE
    try:
        holder.write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "user": getpass.getuser(),
            "since": _now(), "command": " ".join(["incept", *sys.argv[1:]]),
        }))
        yield
    finally:
        with contextlib.suppress(OSError):
            holder.unlink()
        lock.release()


def _now() -> str:
    return dt.datetime.now(tz=dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Steps


def check_policy(config: Config) -> None:
    """What retraining needs of the config, checked before anything starts."""
    metric, crops = config.retrain.metric, [str(c) for c in config.eval.crops]
    if metric not in registry.METRIC_NAMES:
        raise UserError(f"retrain.metric {metric!r} is not a model-version metric; known: {', '.join(registry.METRIC_NAMES)}")
    protocol = metric.split("_")[1].removesuffix("crop")
    if protocol not in crops:
        raise UserError(f"retrain.metric {metric} needs the {protocol}-crop protocol: add {protocol} to eval.crops (now {crops})")
    if not -1.0 <= config.retrain.margin <= 1.0:
        raise UserError(f"retrain.margin must be a fraction in [-1, 1], got {config.retrain.margin}")
    if not config.registry.register:
        raise UserError("retrain compares registered versions: registry.register must stay true")


def shard_source(src: str, shards: str, options=None) -> dict[str, Any]:
    """Shard train and val of `src` into `<shards>/<split>`; only missing or changed shards are written.

    With `options.append` (the cycle's default) a source that gained images gets new shards for
    them and every earlier shard stays as it is: a cycle writes what is new, not the whole set.
    """
    from infra.ray_runtime import init_ray
    from pipelines.shard import ShardOptions, plan_job, run_job

    root = storage.locate(shards)
    options = options or ShardOptions()
    jobs = {split: plan_job(src, split, storage.uri_of(root, split), options) for split in ("train", "val")}  # input errors before Ray
    out: dict[str, Any] = {}
    for split, job in jobs.items():
        if job.todo:
            init_ray()  # an unchanged source needs no Ray at all: every shard is kept
        result = run_job(job)
        log.info("%s: %s (%d written, %d kept)", split, result.summary(), len(result.written), len(result.kept))
        out[split] = {"uri": job.out, "fingerprint": result.fingerprint, "num_images": result.num_images, "written": len(result.written),
                      "bytes_written": result.bytes_written}
    return out


def _champion(client, name: str) -> dict | None:
    """{version, tags, classes, run_id} of the champion, or None when there is none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = rm.aliases.get(registry.CHAMPION)
    if version is None:
        return None
    mv = client.get_model_version(name, str(version))
    metadata = mlflow.models.get_model_info(f"models:/{name}/{version}").metadata or {}
    return {"version": str(version), "tags": dict(mv.tags), "classes": metadata.get("classes"), "run_id": mv.run_id}


def _warm_start(client, config: Config, champion: dict | None, classes: list[str]) -> str | None:
    """The champion's checkpoint when `retrain.warm_start` and it fits this data and model; else None."""
    if not config.retrain.warm_start:
        return None
    if champion is None:
        log.info("retrain.warm_start: no champion yet, training from scratch")
        return None
    v = champion["version"]
    path = champion["tags"].get("checkpoint")
    if not path:
        raise UserError(f"retrain.warm_start: champion version {v} has no checkpoint tag; set retrain.warm_start=false")
    storage.check_no_credentials(path, f"retrain.warm_start: champion version {v}'s checkpoint tag")
    if not storage.exists(storage.locate(path), STATE_FILE):
        raise UserError(f"retrain.warm_start: champion version {v}'s checkpoint {path} is gone; set retrain.warm_start=false")
    if champion["classes"] != classes:
        raise UserError(f"retrain.warm_start: champion version {v} knows other classes than this data; set retrain.warm_start=false")
    # The weights' shapes follow from these keys (and the classes); the other model keys do not change them.
    params = client.get_run(champion["run_id"]).data.params if champion["run_id"] else {}
    for key in ("variant", "width", "aux_logits"):
        ours = str(getattr(config.model, key))
        if params.get(f"model.{key}") != ours:
            raise UserError(f"retrain.warm_start: champion version {v} has model.{key}={params.get(f'model.{key}')}, this config {ours}; "
                            "set retrain.warm_start=false or match the model")
    return path


def _run_name(config: Config, fingerprint: str, init_checkpoint: str | None) -> str:
    """Same data, recipe and starting point -> same name, so a rerun resumes instead of starting over."""
    recipe = dataclasses.asdict(config.recipe)
    digest = hashlib.sha256(json.dumps({"recipe": recipe, "init": init_checkpoint}, sort_keys=True, default=str).encode()).hexdigest()
    return f"retrain-{fingerprint[:12]}-{digest[:8]}"


def _with(config: Config, section: str, **values) -> Config:
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})


def _start_cycle_run(client, config: Config, tags: dict[str, str]) -> str:
    experiment_id = tracking.get_or_create_experiment(config.registry.experiment)
    name = f"retrain-cycle-{dt.datetime.now(tz=dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    return client.create_run(experiment_id, run_name=name, tags={KIND_TAG: "retrain", **tags}).info.run_id


def _record(client, outcome: dict, cycle_run_id: str, training_run_id: str | None) -> None:
    """The decision as tags (and metrics) on the cycle's run and the training run."""
    from mlflow.entities import Metric, RunTag

    tags = {f"retrain.{k}": str(outcome[k]) for k in ("decision", "reason", "promoted", "metric", "margin", "version", "champion_version", "challenger", "champion")}
    now = int(dt.datetime.now().timestamp() * 1000)
    metrics = [Metric(f"{who}_{outcome['metric']}", outcome[who], now, 0) for who in ("challenger", "champion") if outcome[who] is not None]
    client.log_batch(cycle_run_id, metrics=metrics, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])
    client.log_dict(cycle_run_id, outcome, "decision.json")
    if training_run_id:
        client.log_batch(training_run_id, tags=[RunTag(k, v[:5000]) for k, v in {**tags, "retrain.cycle_run_id": cycle_run_id}.items()])


# --------------------------------------------------------------------------------------------
# The cycle


def retrain(src: str, config: Config, *, config_path: str | None = None, workdir: str | Path | None = None,
            shards: str | None = None, shard_size: int | None = None, force: bool = False, reshard: bool = False) -> dict[str, Any]:
    """One cycle; returns the decision (see the module docstring). Raises UserError for what a user can fix.

    `shards`: where the cycle's train/ and val/ shards go (default `<workdir>/shards`); on a cluster
    of several nodes, object storage (or a shared file system) that every node reads.
    `shard_size`: samples per shard (default ShardOptions's 1,000).
    `reshard`: shard the whole source again instead of appending what is new (needed when sharded
    images changed or vanished, a class was added, or the shard options changed).
    """
    check_policy(config)
    workdir = Path(workdir).expanduser().resolve() if workdir else default_workdir()
    shards = shards or str(workdir / "shards")
    storage.check_no_credentials(shards, "--shards")
    with cycle_lock(workdir):
        import mlflow

        tracking.connect()
        client = mlflow.MlflowClient()
        cycle_run_id = _start_cycle_run(client, config, {"retrain.src": os.path.abspath(src), "retrain.workdir": str(workdir),
                                                          "retrain.shards": shards, "retrain.force": str(force),
                                                          "retrain.reshard": str(reshard)})
        try:
            outcome = _cycle(client, src, config, config_path=config_path, shards=shards, shard_size=shard_size, force=force, reshard=reshard,
                             cycle_run_id=cycle_run_id)
        except BaseException as err:
            with contextlib.suppress(Exception):
                client.set_tag(cycle_run_id, "retrain.error", (str(err).splitlines() or [type(err).__name__])[0][:5000])
                client.set_terminated(cycle_run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        client.set_terminated(cycle_run_id, "FINISHED")
    return outcome


def _cycle(client, src: str, config: Config, *, config_path: str | None, shards: str, shard_size: int | None, force: bool,
           reshard: bool, cycle_run_id: str) -> dict[str, Any]:
    from pipelines.shard import ShardOptions

    name, metric, margin = config.registry.model_name, config.retrain.metric, config.retrain.margin
    options = ShardOptions(append=not reshard, **({"shard_size": shard_size} if shard_size else {}))
    shards = shard_source(src, shards, options)
    fingerprint, val_uri = shards["train"]["fingerprint"], shards["val"]["uri"]
    champion = _champion(client, name)
    outcome: dict[str, Any] = {
        "promoted": False, "decision": "", "reason": "", "version": None, "metric": metric, "margin": margin,
        "challenger": None, "champion": None, "champion_version": champion["version"] if champion else None,
        "data_fingerprint": fingerprint, "val_fingerprint": shards["val"]["fingerprint"], "trained": False,
        "training_run_id": None, "cycle_run_id": cycle_run_id, "warm_start": None,
        "shards": {split: shards[split]["uri"] for split in shards},
        "shards_written": {split: shards[split]["written"] for split in shards},
        "bytes_written": sum(shards[split]["bytes_written"] for split in shards),
    }

    def finish(decision: str, reason: str, **more) -> dict[str, Any]:
        outcome.update(decision=decision, reason=reason, **more)
        _record(client, outcome, cycle_run_id, outcome["training_run_id"])
        log.info("retrain decision: %s: %s", decision, reason)
        return outcome

    if champion and champion["tags"].get("data_fingerprint") == fingerprint and not force:
        return finish("skipped", f"no new data: champion version {champion['version']} was trained on data fingerprint {fingerprint[:12]}")

    # 1. Train the challenger on the shards just written; `incept train` evaluates it on data.val
    #    with eval.crops and registers it as the challenger.
    from infra.training import train
    from pipelines import manifest

    classes = manifest.read(shards["train"]["uri"])["classes"]
    config = _with(config, "data", train=shards["train"]["uri"], val=val_uri)
    init_checkpoint = _warm_start(client, config, champion, classes)
    if not config.train.run_name:
        config = _with(config, "train", run_name=_run_name(config, fingerprint, init_checkpoint))
    trained = train(config, config_path=config_path, init_checkpoint=init_checkpoint)
    version = str(trained["model_version"])
    challenger = trained["metrics"][metric]
    outcome.update(trained=True, training_run_id=trained["run_id"], version=version, challenger=challenger, warm_start=init_checkpoint)

    def tag_challenger(decision: str, reason: str) -> None:
        values = {"decision": decision, "reason": reason, "metric": metric, "challenger": challenger, "champion": outcome["champion"],
                  "margin": margin, "champion_version": outcome["champion_version"], "data_fingerprint": fingerprint,
                  "cycle_run_id": cycle_run_id, "at": _now()}
        for key, value in values.items():
            client.set_model_version_tag(name, version, f"retrain.{key}", "none" if value is None else str(value)[:5000])

    if champion and champion["version"] == version:
        reason = f"version {version}, trained on this data with this recipe, is already the champion"
        tag_challenger("unchanged", reason)
        return finish("unchanged", reason, champion=challenger)

    # 2. The champion, now, on the same validation shards with the same protocol.
    if champion:
        if champion["classes"] != classes:
            reason = (f"not comparable: champion version {champion['version']} knows {len(champion['classes'] or [])} classes, "
                      f"this data {len(classes)} (or another order); compare and promote by hand")
            tag_challenger("rejected", reason)
            registry.record_decision(name, version, decision="rejected", reason=reason, client=client)
            return finish("rejected", reason)
        from infra.evaluation import evaluate_model

        evaluated = evaluate_model(f"{name}/{champion['version']}", val_uri, list(config.eval.crops), batch_size=config.eval.batch_size,
                                   max_crops_per_forward=config.eval.max_crops_per_forward, concurrency=config.eval.concurrency, use_gpu=config.train.use_gpu)
        outcome["champion"] = evaluated["metrics"][metric]

    # 3. Decide, and write the decision where the versions are.
    verdict = decide(metric, challenger, outcome["champion"], margin)
    evidence = {"metric": metric, "challenger": challenger, "champion": outcome["champion"], "margin": margin,
                "champion_version": outcome["champion_version"], "data_fingerprint": fingerprint,
                "val_fingerprint": shards["val"]["fingerprint"], "crops": ",".join(map(str, config.eval.crops)), "cycle_run_id": cycle_run_id}
    if verdict.promote:
        now = _champion(client, name)
        if (now["version"] if now else None) != outcome["champion_version"]:
            reason = f"the champion moved to version {now['version'] if now else None} during this cycle; rerun to compare against it"
            tag_challenger("rejected", reason)
            return finish("rejected", reason)
        tag_challenger("promoted", verdict.reason)
        registry.promote(name, version, reason=f"incept retrain: {verdict.reason}", evidence=evidence)
        return finish("promoted", verdict.reason, promoted=True)
    tag_challenger(verdict.decision, verdict.reason)
    registry.record_decision(name, version, decision=verdict.decision, reason=f"incept retrain: {verdict.reason}", evidence=evidence, client=client)
    return finish(verdict.decision, verdict.reason)
