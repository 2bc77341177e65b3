"""The MLflow model registry for Inception-v3: register, look up, promote, roll back, predict.

Plain functions; nothing connects at import time. Each public function connects through
`infra.tracking` (env URI or the embedded SQLite default) when called.

How a version is stored (DESIGN.md, "Registry"):
- The model: `mlflow.pytorch.log_model(..., serialization_format="pt2")` into the training run,
  from the *serving module* (uint8 N x R x R x 3 in, class probabilities N x C out; it
  normalises inside), exported in eval mode with a batch-2 input example so the batch
  dimension stays dynamic (torch.export specialises size-1 dimensions; REFERENCE.md).
  `mlflow.pytorch.load_model("models:/inception-v3@champion")` gives a graph module that needs
  no project code. Pickle is not used: it would need this repository importable at load time
  and it executes code on load.
- The data config (`classes`, `words`, `resolution`, `crop_fraction`, normalisation) is the
  MLmodel file's `metadata`, so it travels with the artifact:
  `mlflow.models.get_model_info(uri).metadata` returns it to any MLflow user.
- Metrics: MLflow 3 keeps model metrics on the LoggedModel behind a version (its `model_id`).
  They are logged with `log_batch(run_id, Metric(..., model_id=...))`, which writes them to the
  source run and to the LoggedModel at once; `get_model_info(uri).metrics` and `show()` read
  them back, newest value per name. The REST ModelVersion carries no `model_id` (MLflow's
  proto has a TODO for it), so it is read from the `model_id` tag or the `models:/m-...` source.
  Only a version without a LoggedModel (registered from `runs:/` by hand or on an MLflow 2
  server) gets its metrics as version tags `metric.<name>`.
- The last evaluation's metrics are the version's. Each evaluation (registration's, `incept
  evaluate`'s) writes its metrics and tags `val_fingerprint` (the validation shards' manifest
  fingerprint), `val_shards` (their URI) and `evaluation.metrics` (the metric names it wrote);
  `show()` keeps only those names, so a 144-crop figure from an older evaluation on another set
  no longer shows as the version's. A version without `evaluation.metrics` (registered before
  the tag existed) shows every metric it holds, newest value per name.
- Tags: `data_fingerprint`, `config_sha256`, `git_commit`, `ray_job_id`, `run_id` (DESIGN.md),
  plus `model_id`, the evaluation's tags above, and the `promotion.*` / `demotion.*` decision
  tags written by promotions.

Alias moves and what the lock guarantees: see `registry_lock()`.
"""

from __future__ import annotations

import copy
import datetime as _dt
import getpass
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from infra import tracking
from pipelines.errors import UserError

log = logging.getLogger(__name__)

MODEL_NAME = "inception-v3"
CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous-champion"
METRIC_NAMES = tuple(f"top{k}_{n}crop" for n in (1, 10, 12, 144) for k in (1, 5))
HEADLINE_METRICS = ("top1_1crop", "top5_1crop")
METRIC_TAG_PREFIX = "metric."  # only for versions without a LoggedModel (see module docstring)
VAL_FINGERPRINT_TAG = "val_fingerprint"  # the validation shards' manifest fingerprint, of the last evaluation
VAL_SHARDS_TAG = "val_shards"  # the URI of those shards, without credentials
EVALUATION_METRICS_TAG = "evaluation.metrics"  # comma-separated names the last evaluation wrote: the version's metrics
LOCK_SUFFIX = ".promotion-lock"  # registered-model name used as the server-side mutex
LOCK_TIMEOUT_S = 60.0
LOCK_LEASE_S = 600.0  # a server-side lock older than this is taken to be from a dead holder
MODEL_ARTIFACT = "model"
ALLOW_PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"

_REF = re.compile(r"^(?:models:/)?(?P<name>[^@]+?)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))$")
_MODEL_ID = re.compile(r"^models:/(?P<id>m-[0-9a-f]+)/?$")


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class VersionRef:
    """A resolved reference: one version of one registered model."""

    name: str
    version: str
    alias: str | None = None  # the alias it was reached through, if any

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass
class VersionInfo:
    """What `show()` and `register()` return: a ModelVersion with its metrics and aliases."""

    name: str
    version: str
    aliases: list[str]
    metrics: dict[str, float]
    tags: dict[str, str]
    run_id: str | None
    model_id: str | None
    source: str
    status: str
    created: str  # ISO 8601, UTC
    checkpoint: str | None = None  # tag `checkpoint`: the training checkpoint this came from
    val_fingerprint: str | None = None  # the validation set `metrics` came from (None: not recorded)
    val_shards: str | None = None  # ... and where its shards were read
    data_config: dict[str, Any] | None = None  # MLmodel metadata, class lists summarised
    created_now: bool = False  # register(): False when an earlier call already made it

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("created_now")  # about the register() call, not the version
        out["uri"] = self.uri
        return out


# --------------------------------------------------------------------------------------------
# Connection


def _client():
    import mlflow

    tracking.connect()
    return mlflow.MlflowClient()


def _error_code(err: Exception) -> str | None:
    return getattr(err, "error_code", None)


# --------------------------------------------------------------------------------------------
# Look-ups


def _parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    match = _REF.match(ref.strip())
    if not match:
        raise UserError(
            f"bad model reference {ref!r}: expected NAME@ALIAS or NAME/VERSION "
            f"(optionally prefixed models:/), e.g. {MODEL_NAME}@{CHAMPION} or {MODEL_NAME}/3"
        )
    return match["name"], match["alias"], match["version"]


def _model_names(client) -> list[str]:
    return sorted(rm.name for rm in _search_registered(client) if not rm.name.endswith(LOCK_SUFFIX))


def _search_registered(client) -> list:
    out, token = [], None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if _error_code(err) != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = _model_names(client)
    raise UserError(
        f"no registered model {name!r} in {tracking.redact(tracking.tracking_uri())}; "
        f"models: {', '.join(names) if names else 'none (register one with incept train)'}"
    )


def _versions(client, name: str, *, max_results: int | None = None) -> list:
    """Versions of `name`, newest first."""
    out, token = [], None
    while True:
        page = client.search_model_versions(
            f"name = '{_quote(name)}'",
            order_by=["version_number DESC"],
            max_results=min(max_results or 200, 200),
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token or (max_results and len(out) >= max_results):
            return out[:max_results] if max_results else out


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _describe_aliases(aliases: dict[str, str]) -> str:
    if not aliases:
        return "none"
    return ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items()))


def resolve(ref: str) -> VersionRef:
    """`NAME@alias`, `NAME/VERSION`, `models:/NAME@alias` or `models:/NAME/VERSION` -> VersionRef.

    An unknown model, alias or version is a UserError that names it and lists what exists.
    """
    return _resolve(_client(), ref)


def _resolve(client, ref: str) -> VersionRef:
    from mlflow.exceptions import MlflowException

    name, alias, version = _parse_ref(ref)
    rm = _registered_model(client, name)
    if alias is not None:
        if alias not in rm.aliases:
            raise UserError(f"model {name!r} has no alias {alias!r}; aliases: {_describe_aliases(rm.aliases)}")
        return VersionRef(name, str(rm.aliases[alias]), alias)
    if not version.isdigit():
        raise UserError(f"bad version {version!r} in {ref!r}: versions are numbers; or use NAME@ALIAS")
    try:
        client.get_model_version(name, version)
    except MlflowException as err:
        if _error_code(err) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        existing = sorted((int(mv.version) for mv in _versions(client, name)))
        raise UserError(
            f"model {name!r} has no version {version}; versions: "
            f"{', '.join(map(str, existing)) if existing else 'none'}"
        ) from None
    return VersionRef(name, str(int(version)))


def _model_id(mv) -> str | None:
    if getattr(mv, "model_id", None):
        return mv.model_id
    if mv.tags.get("model_id"):
        return mv.tags["model_id"]
    match = _MODEL_ID.match(mv.source or "")
    return match["id"] if match else None


def _version_metrics(client, mv) -> dict[str, float]:
    """Newest value per metric name: LoggedModel metrics over `metric.<name>` version tags; only the
    last evaluation's names where the version records them (tag `evaluation.metrics`)."""
    from mlflow.exceptions import MlflowException

    metrics = {}
    for key, value in mv.tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                metrics[key[len(METRIC_TAG_PREFIX) :]] = float(value)
            except ValueError:
                log.warning("version %s/%s: tag %s=%r is not a number", mv.name, mv.version, key, value)
    model_id = _model_id(mv)
    if model_id:
        try:
            logged = client.get_logged_model(model_id)
        except MlflowException as err:
            if _error_code(err) not in ("RESOURCE_DOES_NOT_EXIST", "ENDPOINT_NOT_FOUND"):
                raise
            logged = None
        newest: dict[str, tuple[int, int]] = {}
        for metric in (logged.metrics if logged else None) or []:
            order = (metric.timestamp or 0, metric.step or 0)
            if metric.key not in newest or order >= newest[metric.key]:
                newest[metric.key] = order
                metrics[metric.key] = float(metric.value)
    names = mv.tags.get(EVALUATION_METRICS_TAG)
    if names is not None:
        last = set(names.split(","))
        metrics = {k: v for k, v in metrics.items() if k in last}
    return metrics


def _aliases_of(rm, version: str) -> list[str]:
    return sorted(a for a, v in rm.aliases.items() if str(v) == str(version))


def _iso(ms: int | None) -> str:
    if not ms:
        return ""
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).isoformat(timespec="seconds")


def _summarise_metadata(meta: dict | None) -> dict[str, Any] | None:
    if meta is None:
        return None
    out = {k: v for k, v in meta.items() if k not in ("classes", "words")}
    if "classes" in meta:
        out["num_classes"] = len(meta["classes"])
    return out


def _info(client, ref: VersionRef, *, with_data_config: bool = False) -> VersionInfo:
    mv = client.get_model_version(ref.name, ref.version)
    rm = client.get_registered_model(ref.name)
    data_config = None
    if with_data_config:
        data_config = _summarise_metadata(_metadata(ref))
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=_aliases_of(rm, mv.version),
        metrics=_version_metrics(client, mv),
        tags=dict(mv.tags),
        run_id=mv.run_id or None,
        model_id=_model_id(mv),
        source=mv.source,
        status=mv.status,
        created=_iso(mv.creation_timestamp),
        checkpoint=mv.tags.get("checkpoint"),
        val_fingerprint=mv.tags.get(VAL_FINGERPRINT_TAG),
        val_shards=mv.tags.get(VAL_SHARDS_TAG),
        data_config=data_config,
    )


def _metadata(ref: VersionRef) -> dict | None:
    import mlflow

    return mlflow.models.get_model_info(ref.uri).metadata


def show(ref: str) -> VersionInfo:
    """Version, aliases, metrics, tags, source run, checkpoint and data config of one version."""
    client = _client()
    return _info(client, _resolve(client, ref), with_data_config=True)


def list_models(*, max_versions: int = 20) -> list[dict[str, Any]]:
    """Every registered model with its aliases and its newest `max_versions` versions.

    Each model: {name, aliases: {alias: version}, versions: [{version, aliases, metrics, run_id,
    created}], num_versions_shown}. Versions that hold an alias are always included.
    """
    client = _client()
    out = []
    for rm in sorted(_search_registered(client), key=lambda r: r.name):
        if rm.name.endswith(LOCK_SUFFIX):
            continue
        versions = _versions(client, rm.name, max_results=max_versions)
        shown = {str(mv.version) for mv in versions}
        for version in set(map(str, rm.aliases.values())) - shown:
            versions.append(client.get_model_version(rm.name, version))
        versions.sort(key=lambda mv: int(mv.version), reverse=True)
        out.append({
            "name": rm.name,
            "aliases": {a: str(v) for a, v in sorted(rm.aliases.items())},
            "versions": [
                {
                    "version": str(mv.version),
                    "aliases": _aliases_of(rm, mv.version),
                    "metrics": _version_metrics(client, mv),
                    "val_fingerprint": mv.tags.get(VAL_FINGERPRINT_TAG),
                    "run_id": mv.run_id or None,
                    "created": _iso(mv.creation_timestamp),
                }
                for mv in versions
            ],
        })
    return out


# --------------------------------------------------------------------------------------------
# Metrics


def _check_metrics(metrics: dict[str, float]) -> dict[str, float]:
    clean = {}
    for name, value in metrics.items():
        if name not in METRIC_NAMES:
            raise UserError(f"unknown model-version metric {name!r}; known: {', '.join(METRIC_NAMES)}")
        value = float(value)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise UserError(f"metric {name}={value} is not a fraction in [0, 1]")
        clean[name] = value
    return clean


def _write_metrics(client, mv, metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric

    if not metrics:
        return
    model_id, run_id = _model_id(mv), mv.run_id
    if model_id and run_id:
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0, model_id=model_id, run_id=run_id) for k, v in metrics.items()],
        )
        return
    # No LoggedModel (or no run to log through): the version's own tags are all there is.
    for key, value in metrics.items():
        client.set_model_version_tag(mv.name, mv.version, f"{METRIC_TAG_PREFIX}{key}", repr(value))


def _evaluation_tags(metrics: dict[str, float], val_fingerprint: str | None, val_shards: str | None) -> dict[str, str | None]:
    from pipelines import storage

    return {
        EVALUATION_METRICS_TAG: ",".join(sorted(metrics)),
        VAL_SHARDS_TAG: storage.redact(val_shards) if val_shards else None,
        VAL_FINGERPRINT_TAG: val_fingerprint or None,
    }


def _write_evaluation(client, mv, metrics: dict[str, float], *, val_fingerprint: str | None, val_shards: str | None) -> None:
    """One evaluation's metrics and the validation set they came from: the version's metrics from now on.

    MLflow writes the metrics and each tag in separate requests, so the order keeps a reader in
    between (or a version left by a failed write) from naming the wrong set: the old set's tags
    go first (metrics from no named set), the new names next, the new set's tags last.
    """
    if not metrics:
        return
    tags = _evaluation_tags(metrics, val_fingerprint, val_shards)
    for key in (VAL_FINGERPRINT_TAG, VAL_SHARDS_TAG):
        if key in mv.tags:
            client.delete_model_version_tag(mv.name, mv.version, key)
    _write_metrics(client, mv, metrics)
    for key, value in tags.items():  # names, shards, fingerprint: the fingerprint last
        if value is not None:
            client.set_model_version_tag(mv.name, mv.version, key, value)


def set_version_metrics(ref: str, metrics: dict[str, float], *, val_fingerprint: str, val_shards: str) -> VersionInfo:
    """Record one evaluation's `metrics` (names from METRIC_NAMES, fractions) on the version `ref` points to.

    `val_fingerprint` and `val_shards`: the manifest fingerprint and URI of the validation shards
    evaluated on. These metrics replace the version's: `show()` reads back only them, and the set.
    """
    client = _client()
    resolved = _resolve(client, ref)
    clean = _check_metrics(metrics)
    _write_evaluation(client, client.get_model_version(resolved.name, resolved.version), clean,
                      val_fingerprint=val_fingerprint, val_shards=val_shards)
    return _info(client, resolved)


# --------------------------------------------------------------------------------------------
# Registration


def _clean_metadata(metadata: dict) -> dict[str, Any]:
    """A YAML/JSON-safe copy of the data config, with its required keys checked."""
    meta = json.loads(json.dumps(dict(metadata), default=_jsonable))
    if "resolution" not in meta and "input_size" in meta:
        meta["resolution"] = meta["input_size"]  # trainers' DataConfig names it input_size
    missing = [k for k in ("classes", "resolution", "crop_fraction") if k not in meta]
    if missing:
        raise ValueError(f"register(): metadata lacks {', '.join(missing)}")
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes:
        raise ValueError("register(): metadata['classes'] must be a non-empty list of wnids")
    words = meta.setdefault("words", list(classes))
    if isinstance(words, dict):  # wnid -> words, as manifests hold them: align with classes
        words = meta["words"] = [words.get(wnid, wnid) for wnid in classes]
    if not isinstance(words, list) or len(words) != len(classes):
        raise ValueError(f"register(): {len(words)} words for {len(classes)} classes")
    return meta


def _jsonable(value):
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value {value!r} is not JSON-serialisable")


def _check_example(input_example, meta: dict):
    import numpy as np

    example = np.asarray(input_example)
    size = int(meta["resolution"])
    if example.dtype != np.uint8 or example.ndim != 4 or example.shape[1:] != (size, size, 3):
        raise ValueError(
            f"register(): input_example must be uint8 N x {size} x {size} x 3 (the serving module's "
            f"input), got {example.dtype} {example.shape}"
        )
    if example.shape[0] < 2:
        # torch.export turns a size-1 batch dimension into a constant (REFERENCE.md): batch 2
        # keeps it dynamic.
        example = np.concatenate([example, example], axis=0)
    return example[:2]


def _pip_requirements() -> list[str]:
    """What loading the pt2 model needs; stating it skips MLflow's slow requirement inference."""
    import mlflow
    import numpy
    import torch

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",  # no local label (+cpu): not on PyPI
        f"numpy=={numpy.__version__}",
    ]


def _find_by_run_id(client, name: str, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{_quote(name)}' and tags.run_id = '{_quote(run_id)}'")
    except MlflowException as err:
        if _error_code(err) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    found = sorted(found, key=lambda mv: int(mv.version))
    if len(found) > 1:
        log.warning("model %s has %d versions for run %s; using the first", name, len(found), run_id)
    return found[0] if found else None


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="Inception-v3 (arXiv 1512.00567), trained with incept")
    except MlflowException as err:
        if _error_code(err) != "RESOURCE_ALREADY_EXISTS":
            raise


def register(
    *,
    model,
    input_example,
    metadata: dict,
    metrics: dict[str, float],
    tags: dict[str, str],
    run_id: str,
    model_name: str = MODEL_NAME,
    alias: str | None = CHALLENGER,
    val_fingerprint: str | None = None,
    val_shards: str | None = None,
) -> VersionInfo:
    """Log the serving `model` into run `run_id`, register it, set `alias`, record metrics and tags.

    `model` takes uint8 N x R x R x 3 and returns probabilities N x C; `input_example` is a batch
    of such images (batch 1 is doubled, see `_check_example`). `metadata` is the data config
    (`classes`, `words`, `resolution`, `crop_fraction`, normalisation). `metrics` are one
    evaluation's, on the validation shards `val_shards` whose manifest fingerprint is
    `val_fingerprint` (as `set_version_metrics`). Call from one process only (rank 0 / the driver).

    Idempotent per `run_id`: if a version of `model_name` already carries tag run_id == run_id,
    nothing is logged again; missing tags are completed, `metrics` become the version's unless
    it already shows exactly them from the same set, the alias is set unless a newer version
    holds it, and that version is returned (`created_now` False).
    """
    import mlflow
    import torch

    client = _client()
    meta = _clean_metadata(metadata)
    example = _check_example(input_example, meta)
    clean_metrics = _check_metrics(metrics)
    version_tags = {str(k): str(v) for k, v in tags.items() if v is not None and str(v) != ""}
    version_tags["run_id"] = run_id

    mv = _find_by_run_id(client, model_name, run_id)
    created = False
    if mv is None:
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException as err:
            raise UserError(f"cannot register: run {run_id!r} not found in {tracking.redact(tracking.tracking_uri())}") from err
        if any(p.device.type != "cpu" for p in model.parameters()):
            model = copy.deepcopy(model).cpu()  # export on CPU: the registered graph must load anywhere
        was_training = model.training
        model.eval()  # export in eval mode: BatchNorm running stats, no dropout, no aux head
        try:
            with torch.no_grad():
                probs = model(torch.from_numpy(example))
            if tuple(probs.shape) != (example.shape[0], len(meta["classes"])):
                raise ValueError(
                    f"register(): the serving module gave {tuple(probs.shape)} for {example.shape[0]} "
                    f"images; expected ({example.shape[0]}, {len(meta['classes'])}) probabilities"
                )
            # The LoggedModel is created here, in the run's experiment: left to log_model, it lands
            # in the fluent API's active experiment (Default, "0", when none is set), whatever
            # the run's experiment is (mlflow/tracking/fluent.py, _create_logged_model).
            logged = client.create_logged_model(
                experiment_id=run.info.experiment_id,
                name=MODEL_ARTIFACT,
                source_run_id=run_id,
                tags=version_tags,
                params={k: str(v) for k, v in run.data.params.items()},
            )
            info = mlflow.pytorch.log_model(
                model,
                name=MODEL_ARTIFACT,
                model_id=logged.model_id,
                run_id=run_id,
                input_example=example,
                metadata=meta,
                serialization_format="pt2",
                pip_requirements=_pip_requirements(),
            )
        finally:
            model.train(was_training)
        # A failure between here and create_model_version leaves a LoggedModel without a
        # version; a rerun logs a new one. Harmless, and no duplicate version.
        with registry_lock(model_name, client=client):
            mv = _find_by_run_id(client, model_name, run_id)  # another process may have won
            if mv is None:
                _ensure_registered_model(client, model_name)
                mv = client.create_model_version(
                    model_name,
                    source=info.model_uri,
                    run_id=run_id,
                    tags={**version_tags, "model_id": info.model_id},
                    model_id=info.model_id,
                )
                created = True
                log.info("registered %s version %s from run %s", model_name, mv.version, run_id)
    else:
        log.info("%s version %s already holds run %s: not registering it again", model_name, mv.version, run_id)

    for key, value in version_tags.items():
        if mv.tags.get(key) != value:
            client.set_model_version_tag(model_name, mv.version, key, value)
    # A rerun after a failure finds the same evaluation already written: nothing is logged twice.
    evaluation = _evaluation_tags(clean_metrics, val_fingerprint, val_shards)
    same = not created and _version_metrics(client, mv) == clean_metrics and all(mv.tags.get(k) == v for k, v in evaluation.items())
    if not same:
        _write_evaluation(client, mv, clean_metrics, val_fingerprint=val_fingerprint, val_shards=val_shards)
    if alias:
        with registry_lock(model_name, client=client):
            holder = client.get_registered_model(model_name).aliases.get(alias)
            if holder is not None and int(holder) > int(mv.version):
                log.info("alias %s stays on newer version %s (not moved back to %s)", alias, holder, mv.version)
            elif str(holder) != str(mv.version):
                client.set_registered_model_alias(model_name, alias, mv.version)
    result = _info(client, VersionRef(model_name, str(mv.version)))
    result.created_now = created
    return result


# --------------------------------------------------------------------------------------------
# Alias moves


@contextmanager
def registry_lock(name: str, *, client=None, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Serialise alias moves on registered model `name`. Two layers:

    1. A file lock `<workdir>/locks/registry-<name>.lock`: exact mutual exclusion between
       processes on this machine that share the work directory, released by the OS if the
       holder dies.
    2. A server-side mutex: creating the registered model `<name>.promotion-lock` succeeds for
       exactly one client (the store's unique name constraint), on any machine that talks to
       the same MLflow server or database; deleting it releases. A holder that died leaves it
       behind: after LOCK_LEASE_S it is taken to be stale and removed; breaking a stale lock is
       best effort (two breakers at the same moment could both proceed).

    Inside the lock, promote/rollback read the aliases, move them, and read them back: an alias
    moved by a writer that bypasses this lock (the MLflow UI, another tool) is reported as an
    error, not silently lost. MLflow offers no compare-and-set on aliases, so a bypassing writer
    can still win the last write; the read-back is what detects it.
    """
    from filelock import FileLock, Timeout

    client = client or _client()
    path = tracking.workdir() / "locks" / f"registry-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=timeout):
            with _server_mutex(client, name, timeout=timeout):
                yield
    except Timeout:
        raise UserError(f"registry lock {path} is held by another incept process for over {timeout:.0f} s; retry later") from None


@contextmanager
def _server_mutex(client, name: str, *, timeout: float) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    lock_name = f"{name}{LOCK_SUFFIX}"
    token = uuid.uuid4().hex
    holder = f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            client.create_registered_model(
                lock_name,
                tags={"token": token, "holder": holder, "acquired_at": f"{time.time():.3f}"},
                description=f"incept: promotion lock for {name}; delete it only if its holder is dead",
            )
            break
        except MlflowException as err:
            if _error_code(err) != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held = client.get_registered_model(lock_name)
        except MlflowException as err:
            if _error_code(err) == "RESOURCE_DOES_NOT_EXIST":
                continue  # released between our create and our look: try again at once
            raise
        age = time.time() - float(held.tags.get("acquired_at", "0") or 0)
        if age > LOCK_LEASE_S:
            log.warning("breaking stale registry lock %s held by %s for %.0f s", lock_name, held.tags.get("holder"), age)
            _delete_lock(client, lock_name, held.tags.get("token"))
            continue
        if time.monotonic() > deadline:
            raise UserError(
                f"registry lock {lock_name!r} held by {held.tags.get('holder', '?')} for {age:.0f} s; "
                f"retry later, or delete registered model {lock_name!r} if that process is dead"
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        yield
    finally:
        _delete_lock(client, lock_name, token)


def _delete_lock(client, lock_name: str, token: str | None) -> None:
    from mlflow.exceptions import MlflowException

    try:
        held = client.get_registered_model(lock_name)
        if token is not None and held.tags.get("token") != token:
            return  # not ours any more
        client.delete_registered_model(lock_name)
    except MlflowException as err:
        if _error_code(err) != "RESOURCE_DOES_NOT_EXIST":
            log.warning("could not release registry lock %s: %s", lock_name, str(err).splitlines()[0])


def _now() -> str:
    return _dt.datetime.now(tz=_dt.timezone.utc).isoformat(timespec="seconds")


def _actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _expect_aliases(client, name: str, expected: dict[str, str], during: str) -> dict[str, str]:
    actual = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    wrong = {a: actual.get(a) for a, v in expected.items() if actual.get(a) != v}
    if wrong:
        raise UserError(
            f"{during} of {name!r}: aliases moved underneath it by a writer outside the registry lock: "
            f"expected {_describe_aliases(expected)}, found {_describe_aliases(actual)}"
        )
    return actual


def record_decision(
    name: str, version: str | int, *, decision: str, reason: str, evidence: dict[str, Any] | None = None, client=None
) -> dict[str, str]:
    """Write a decision about version `version` (promoted, rejected, rollback...) to its tags.

    Tags: promotion.decision, promotion.reason, promotion.at, promotion.by, promotion.evidence
    (JSON), and promotion.evidence.<key> for each scalar in `evidence` so they can be searched.
    A later decision on the same version overwrites the earlier one's tags.
    """
    client = client or _client()
    evidence = json.loads(json.dumps(evidence or {}, default=_jsonable, sort_keys=True))
    tags = {
        "promotion.decision": decision,
        "promotion.reason": reason,
        "promotion.at": _now(),
        "promotion.by": _actor(),
        "promotion.evidence": json.dumps(evidence, sort_keys=True),
    }
    for key, value in evidence.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            tags[f"promotion.evidence.{key}"] = str(value)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return tags


def promote(name: str, version: str | int, *, reason: str, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make `version` the champion: the old champion becomes previous-champion.

    Under `registry_lock`; the aliases are read back afterwards. The decision (reason, evidence,
    time, who, the previous champion) is written to the new champion's tags, and
    demotion.replaced_by / demotion.at to the old one's. Promoting the current champion changes
    nothing (`changed` False).
    """
    client = _client()
    version = str(version)
    with registry_lock(name, client=client):
        ref = _resolve(client, f"{name}/{version}")
        before = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
        old = before.get(CHAMPION)
        result = {"name": name, "version": ref.version, "previous_champion": old, "aliases_before": before}
        if old == ref.version:
            return {**result, "changed": False, "aliases": before, "decision": None}
        # previous-champion first: if we die between the two moves, the champion is untouched.
        if old is not None:
            client.set_registered_model_alias(name, PREVIOUS, old)
        client.set_registered_model_alias(name, CHAMPION, ref.version)
        expected = {CHAMPION: ref.version, **({PREVIOUS: old} if old else {})}
        after = _expect_aliases(client, name, expected, "promotion")
        decision = record_decision(
            name, ref.version, decision="promoted", reason=reason,
            evidence={**(evidence or {}), "previous_champion": old}, client=client,
        )
        if old is not None:
            client.set_model_version_tag(name, old, "demotion.replaced_by", ref.version)
            client.set_model_version_tag(name, old, "demotion.at", decision["promotion.at"])
    log.info("promoted %s version %s to %s (was %s)", name, ref.version, CHAMPION, old)
    return {**result, "changed": True, "aliases": after, "decision": decision}


def rollback(name: str, *, reason: str = "rollback") -> dict[str, Any]:
    """Swap champion and previous-champion (under `registry_lock`, read back afterwards)."""
    client = _client()
    with registry_lock(name, client=client):
        before = {a: str(v) for a, v in _registered_model(client, name).aliases.items()}
        current, target = before.get(CHAMPION), before.get(PREVIOUS)
        if target is None:
            raise UserError(f"nothing to roll back to: model {name!r} has no {PREVIOUS!r} alias; aliases: {_describe_aliases(before)}")
        # champion first: serving moves at once; previous-champion follows.
        client.set_registered_model_alias(name, CHAMPION, target)
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, current)
        expected = {CHAMPION: target, **({PREVIOUS: current} if current else {})}
        after = _expect_aliases(client, name, expected, "rollback")
        decision = record_decision(
            name, target, decision="rollback", reason=reason, evidence={"previous_champion": current}, client=client
        )
        if current is not None:
            client.set_model_version_tag(name, current, "demotion.replaced_by", target)
            client.set_model_version_tag(name, current, "demotion.at", decision["promotion.at"])
    log.info("rolled %s back: champion %s -> %s", name, current, target)
    return {"name": name, "version": target, "previous_champion": current, "aliases_before": before,
            "aliases": after, "changed": True, "decision": decision}


# --------------------------------------------------------------------------------------------
# Use


@contextmanager
def _pickle_refused() -> Iterator[None]:
    """MLflow's own guard, on for the block: a pickled model is refused, and a pt2 archive is first
    checked to hold only what torch's weights_only unpickler admits (mlflow.pytorch._load_model).
    MLflow allows pickle by default; a registry is written by many hands, so loading must not run
    code that whoever registered a version chose."""
    before = os.environ.get(ALLOW_PICKLE_ENV)
    os.environ[ALLOW_PICKLE_ENV] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ALLOW_PICKLE_ENV, None)
        else:
            os.environ[ALLOW_PICKLE_ENV] = before


def load(ref: str):
    """(module, metadata) for `ref`: the serving module as MLflow loads it, and its data config.

    Never unpickles: only a pickle-free torch.export (pt2) archive loads; anything else is a
    UserError naming the version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    client = _client()
    resolved = _resolve(client, ref)
    with tempfile.TemporaryDirectory(prefix="incept-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=resolved.uri, dst_path=tmp)
        try:
            with _pickle_refused():
                module = mlflow.pytorch.load_model(local)
        except MlflowException as err:
            if "pickle" not in str(err).lower():
                raise
            raise UserError(
                f"refusing to load {resolved.name}/{resolved.version}: it is not a pickle-free torch.export (pt2) model, "
                "and loading it would unpickle code; register it again with incept train"
            ) from None
        metadata = Model.load(local).metadata or {}
    return module, metadata  # exported in eval mode (register)


def _resolution(meta: dict) -> int:
    value = meta.get("resolution", meta.get("input_size"))
    if value is None:
        raise UserError("the registered model's metadata has no resolution; re-register it with incept train")
    return int(value)


def _read_image(path: str | os.PathLike):
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def predict(
    ref: str, images: Sequence[str | os.PathLike], *, top: int = 5, batch_size: int = 16
) -> list[list[tuple[str, str, float]]]:
    """Top-`top` (wnid, words, probability) per image, from the single central crop (protocol "1")."""
    import numpy as np
    import torch

    from pipelines.crops import PROTOCOLS

    if not images:
        raise UserError("no images given")
    pictures = [_read_image(p) for p in images]  # a bad file fails before the model download
    module, meta = load(ref)
    size, fraction = _resolution(meta), float(meta["crop_fraction"])
    classes = meta["classes"]
    words = meta.get("words") or classes
    crop = PROTOCOLS["1"]
    batch = np.concatenate([np.asarray(crop(picture, size, fraction), dtype=np.uint8) for picture in pictures])
    probs = []
    with torch.inference_mode():
        for start in range(0, len(batch), batch_size):
            probs.append(module(torch.from_numpy(batch[start : start + batch_size])).float())
    probs = torch.cat(probs)
    if probs.shape[1] != len(classes):
        raise UserError(f"{ref}: the model gives {probs.shape[1]} scores but its metadata lists {len(classes)} classes")
    k = min(top, len(classes))
    values, indices = probs.topk(k, dim=1)
    return [
        [(classes[i], words[i], float(v)) for v, i in zip(row_v.tolist(), row_i.tolist())]
        for row_v, row_i in zip(values, indices)
    ]
