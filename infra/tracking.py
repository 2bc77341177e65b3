"""Where MLflow lives for this project, and a fast, clear failure when it is not there.

- `MLFLOW_TRACKING_URI` set: that server (or store). Not set: the embedded default, a SQLite
  store `sqlite:///<workdir>/mlflow.db` with artifacts under `<workdir>/mlartifacts`, where the
  work directory is `$INCEPT_WORKDIR` or `./work`.
- MLflow's own HTTP client retries a dead server for minutes (7 retries, backoff factor 2, 120 s
  per request: mlflow/environment_variables.py). `configure()` lowers those defaults unless the
  user set them, and `check_reachable()` probes the server once with a short timeout so that a
  wrong URI is one error line in seconds, not a hang.
- Credentials (`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`, or a user:password part
  in the URI) are sent by MLflow's client; this module never logs or prints them: URIs go
  through `redact()` before they reach a message.

Nothing here connects at import time.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pipelines.errors import UserError

log = logging.getLogger(__name__)

EXPERIMENT = "inception-v3"  # DESIGN.md: experiment and registered model share this name
DEFAULT_PROBE_TIMEOUT_S = 10.0

# MLflow's HTTP retry defaults add up to minutes against a dead server; these add up to about
# 7 s (backoff 1, 2, 4 s) plus the request timeouts. Set only where the user has not.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    # Per socket operation, not per upload: a 100 MB model upload through the artifact proxy
    # keeps making progress well inside it.
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def workdir() -> Path:
    """The work directory, `$INCEPT_WORKDIR` or `./work`, created if missing."""
    path = Path(os.environ.get("INCEPT_WORKDIR") or "work").expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the work directory {path}: {err.strerror}; set INCEPT_WORKDIR") from err
    return path


def is_embedded(uri: str) -> bool:
    """True for a store this process opens itself (SQLite or another database, a folder)."""
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme not in ("http", "https", "databricks", "databricks-uc", "uc")


def is_http(uri: str) -> bool:
    return urllib.parse.urlparse(uri).scheme in ("http", "https")


def embedded_uri() -> str:
    """The embedded default store: `sqlite:///<workdir>/mlflow.db`."""
    return f"sqlite:///{workdir() / 'mlflow.db'}"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else the embedded SQLite store in the work directory.

    Note: `mlflow.set_tracking_uri` (called by `configure()`) exports MLFLOW_TRACKING_URI to the
    environment, so after `configure()` this returns what was configured.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or embedded_uri()


def artifact_root() -> str | None:
    """Artifact location for new experiments in the embedded store; None: the store decides."""
    if tracking_uri() != embedded_uri():
        return None
    root = workdir() / "mlartifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root.as_uri()


def redact(uri: str) -> str:
    """`uri` with any user:password part replaced, fit for a log line or an error message."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def configure() -> str:
    """Point mlflow at the project's tracking URI (and the same registry) and return the URI.

    Also sets short HTTP retry and timeout defaults for MLflow's client where the user set none.
    """
    import mlflow

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    log.debug("MLflow tracking URI: %s", redact(uri))
    return uri


def _fix_hint(uri: str) -> str:
    return (
        f"start the server or set MLFLOW_TRACKING_URI to a running one "
        f"(unset it to use the embedded SQLite store in {os.environ.get('INCEPT_WORKDIR') or './work'})"
    )


def is_database(uri: str) -> bool:
    """A SQLAlchemy store on a database server (postgresql://, mysql://, with or without +driver)."""
    return urllib.parse.urlparse(uri).scheme.split("+")[0] in ("postgresql", "postgres", "mysql", "mssql")


def check_database(uri: str, *, timeout: float = DEFAULT_PROBE_TIMEOUT_S) -> None:
    """One UserError line if the database store at `uri` cannot be reached (MLflow would retry for minutes)."""
    import sqlalchemy

    shown = redact(uri)
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": max(1, int(timeout))})
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as err:
        raise UserError(f"MLflow store {shown} needs the {err.name} driver: pip install 'incept[server]'") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise UserError(
            f"MLflow store {shown} is unreachable ({reason[0][:200] if reason else type(err).__name__}); "
            "start the database or fix MLFLOW_TRACKING_URI"
        ) from None


def check_reachable(uri: str | None = None, *, timeout: float = DEFAULT_PROBE_TIMEOUT_S) -> None:
    """Raise one clear UserError line if the tracking server (or database) at `uri` cannot be used.

    Probes `GET <uri>/health` (no retries, `timeout` seconds), then one authenticated API call so
    that wrong credentials show up here too. A database store gets one connection attempt; files
    and SQLite need no probe.
    """
    uri = uri or tracking_uri()
    if is_database(uri):
        check_database(uri, timeout=timeout)
        return
    if not is_http(uri):
        return
    shown = redact(uri)
    base = uri.rstrip("/")
    tls = _tls_context(uri)
    try:
        with urllib.request.urlopen(f"{strip_userinfo(base)}/health", timeout=timeout, context=tls) as resp:
            resp.read(64)
    except urllib.error.HTTPError as err:
        # A proxy in front of MLflow may guard /health too; the API call below says more.
        if err.code not in (401, 403, 404):
            raise UserError(f"MLflow tracking server {shown} answered HTTP {err.code} on /health; {_fix_hint(uri)}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"MLflow tracking server {shown} is unreachable ({_reason(reason)}); {_fix_hint(uri)}") from None

    api = f"{strip_userinfo(base)}/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(api, headers=_auth_headers(uri))
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=tls) as resp:
            json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise UserError(
                f"MLflow tracking server {shown} rejected the credentials (HTTP 401); "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ) from None
        if err.code == 403:
            raise UserError(
                f"MLflow tracking server {shown} denied access (HTTP 403); "
                "ask its admin for permissions for MLFLOW_TRACKING_USERNAME"
            ) from None
        raise UserError(f"MLflow tracking server {shown} answered HTTP {err.code} on its REST API; is this an MLflow server?") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"MLflow tracking server {shown} is unreachable ({_reason(reason)}); {_fix_hint(uri)}") from None
    except ValueError:
        raise UserError(f"MLflow tracking server {shown} did not answer JSON on its REST API; is this an MLflow server?") from None


def _tls_context(uri: str):
    """TLS settings as MLflow's client reads them: MLFLOW_TRACKING_INSECURE_TLS, ..._SERVER_CERT_PATH."""
    if not uri.startswith("https:"):
        return None
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # the user asked MLflow to skip verification too
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)


def _reason(reason) -> str:
    text = str(getattr(reason, "strerror", None) or reason)
    return "timed out" if "timed out" in text.lower() else text


def strip_userinfo(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _auth_headers(uri: str) -> dict[str, str]:
    """Basic auth as MLflow's client sends it: the env vars, else the URI's user:password."""
    parts = urllib.parse.urlsplit(uri)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or (urllib.parse.unquote(parts.username) if parts.username else None)
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or (urllib.parse.unquote(parts.password) if parts.password else None)
    headers = {}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        raw = f"{user}:{password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    elif token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


# What workers, evaluation actors and jobs on other nodes need to reach the same tracking server.
# Credentials are not among them: Ray stores a runtime_env with the job or actor and shows it to
# anyone who can list them, so each node gets MLFLOW_TRACKING_USERNAME / _PASSWORD from its own
# environment (docs/operations.md).
WORKER_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


def worker_env() -> dict[str, str]:
    """WORKER_ENV as set in this process, for a Ray runtime_env; the URI without any user:password."""
    env = {k: os.environ[k] for k in WORKER_ENV if os.environ.get(k)}
    if "MLFLOW_TRACKING_URI" in env:
        env["MLFLOW_TRACKING_URI"] = strip_userinfo(env["MLFLOW_TRACKING_URI"])
    return env


def connect(*, timeout: float = DEFAULT_PROBE_TIMEOUT_S) -> str:
    """`configure()` then `check_reachable()`: what every verb that talks to MLflow does first."""
    uri = configure()
    check_reachable(uri, timeout=timeout)
    return uri


def get_or_create_experiment(name: str = EXPERIMENT) -> str:
    """The id of experiment `name`, created (with the embedded artifact root) if missing."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise UserError(
                f"experiment {name!r} is deleted in {redact(mlflow.get_tracking_uri())}; "
                "restore it (mlflow experiments restore) or choose another name"
            )
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root())
    except MlflowException as err:
        # Another process created it between our look-up and our create.
        if err.error_code == "RESOURCE_ALREADY_EXISTS":
            return client.get_experiment_by_name(name).experiment_id
        raise
