"""Ray job submission for `incept`: ship the project to a cluster and run one verb there.

`incept submit -- VERB ARGS...` becomes a Ray job whose entrypoint is
`python -m infra.cli VERB ARGS...`, run in a runtime_env whose `working_dir` is this source
tree (minus the virtualenv, work data, caches) and whose env_vars carry the MLflow settings.
The job server is the Ray dashboard's HTTP API (`http://HEAD:8265`), reached with
`ray.job_submission.JobSubmissionClient`.

Everything here is import-safe: Ray is imported inside `connect`, and no connection is opened
until a function is called. Every HTTP request has a timeout (`RequestTimeouts`), and every
failure a user can fix comes back as a one-line `UserError`.

Token authentication (Ray >= 2.52; what Ray 2.60's own code does, read from
`ray/_private/authentication/` and `ray/dashboard/modules/dashboard_sdk.py`):
- The dashboard's HTTP API answers 401 without `Authorization: Bearer TOKEN` (403 with a wrong
  one) when the cluster runs in token mode. `JobSubmissionClient` adds that header itself only
  when *this* process's `RAY_AUTH_MODE` is `token`, so a plain client gets 401 from a cluster
  that `ray start --head` put in token mode on its own.
- `ray start --head` turns token mode on when `RAY_AUTH_MODE=token`, or when `RAY_AUTH_MODE`
  is unset and a token exists; a local `ray.init()` always does, and writes
  `~/.ray/auth_token` if it is missing.
- Ray looks for the token in this order: `RAY_AUTH_TOKEN`; the file named by
  `RAY_AUTH_TOKEN_PATH` (unreadable or empty is fatal, never a silent fall-back);
  `~/.ray/auth_token`.
We apply the same rule as `ray start --head`: unless `RAY_AUTH_MODE=disabled`, a token found in
that order is sent as the header (a cluster without token mode ignores it); with
`RAY_AUTH_MODE=token` and no token, it is an error before any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import logging
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipelines.errors import UserError

log = logging.getLogger(__name__)

# The dashboard's default port on the head node (`ray start --dashboard-port`).
DEFAULT_ADDRESS = "http://127.0.0.1:8265"

# The source tree this module belongs to: what `working_dir` ships.
REPO_ROOT = Path(__file__).resolve().parents[1]

# Gitignore-style patterns, relative to REPO_ROOT (Ray matches them with its bundled pathspec;
# a leading "/" anchors a pattern at the top). Ray also honours .gitignore by default, but
# these must hold even where .gitignore says otherwise: Ray refuses a package over 512 MiB, and
# a virtualenv, shards or an MLflow store would blow through that.
RUNTIME_ENV_EXCLUDES = (
    "/.venv",
    "/work",
    "/.git",
    "/data",
    "/mlruns",
    "/mlflow.db",
    "/build",
    "*.tar",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
)

# Settings the job needs to reach the same MLflow server and work directory as the submitter.
# Ray stores a job's runtime_env with the job and shows it to anyone who can list jobs, so no
# secret travels in it: not the cluster's token (RAY_*: the job's driver gets RAY_ADDRESS from
# Ray), not MLflow's or AWS's credentials, not a user:password inside the tracking URI (stripped).
# The cluster's nodes have their own (docs/operations.md).
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "INCEPT_WORKDIR",
)

# Values of these never leave this module in results (`jobs status`, `jobs list`).
_SECRET_MARKERS = ("PASSWORD", "TOKEN", "SECRET", "KEY")

# Ray's job server keys jobs by submission_id in a URL path: keep IDs URL- and shell-safe.
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# scheme://user:password@host or scheme://token@host inside any argument.
_CREDENTIALS_IN_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#@]+@")

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


@dataclass(frozen=True)
class RequestTimeouts:
    """Timeouts for every request to the job server, in seconds."""

    connect_s: float = 10.0  # TCP connect: an unreachable head fails within this
    read_s: float = 60.0  # between bytes of one response (an upload's reply included)


# --- addresses and authentication --------------------------------------------------------


def resolve_address(explicit: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The job server URL: `explicit`, else RAY_API_SERVER_ADDRESS, else an http(s)
    RAY_ADDRESS, else DEFAULT_ADDRESS.

    A RAY_ADDRESS that is not an http(s) URL (a GCS `host:6379` or `ray://` address, as set for
    `ray.init`) is not the job server; it is skipped with a log line rather than guessed at.
    """
    env = os.environ if environ is None else environ
    if explicit:
        address = explicit
    elif env.get("RAY_API_SERVER_ADDRESS"):
        address = env["RAY_API_SERVER_ADDRESS"]
    elif env.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
        address = env["RAY_ADDRESS"]
    else:
        if env.get("RAY_ADDRESS"):
            log.info(
                "RAY_ADDRESS=%s is not a dashboard URL; using %s (pass --address http://HEAD:8265)",
                env["RAY_ADDRESS"],
                DEFAULT_ADDRESS,
            )
        address = DEFAULT_ADDRESS
    if not address.startswith(("http://", "https://")):
        raise UserError(
            f"job server address {address!r} is not an http(s) URL; "
            "use the dashboard URL, e.g. http://HEAD:8265"
        )
    return address.rstrip("/")


def find_auth_token(
    environ: Mapping[str, str] | None = None, home: Path | None = None
) -> tuple[str, str] | None:
    """(token, where it came from) by Ray's precedence, or None (see the module docstring)."""
    env = os.environ if environ is None else environ
    mode = env.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as err:
            raise UserError(
                f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({err.strerror}); fix or unset it"
            ) from None
        if not token:
            raise UserError(f"RAY_AUTH_TOKEN_PATH={path} is empty; put the cluster's token in it")
        return token, f"RAY_AUTH_TOKEN_PATH={path}"
    default = (home if home is not None else Path.home()) / ".ray" / "auth_token"
    with contextlib.suppress(OSError):
        token = default.read_text().strip()
        if token:
            return token, str(default)
    if mode == "token":
        raise UserError(
            "RAY_AUTH_MODE=token but no token found: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, "
            "or write it to ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
        )
    return None


# --- what a job is made of ---------------------------------------------------------------


def build_entrypoint(argv: Sequence[str]) -> str:
    """The job's shell command: `python -m infra.cli ARGV...`, each argument quoted.

    `python` is the cluster's interpreter (the one Ray runs on); the working_dir is the job's
    current directory, so `-m infra.cli` imports the shipped copy of this tree.
    """
    if not argv:
        raise UserError("nothing to submit: give a verb after `--`, e.g. `incept submit -- train ...`")
    for arg in argv:
        # Ray keeps the entrypoint with the job and shows it to anyone who can list jobs.
        if _CREDENTIALS_IN_URI.search(arg):
            raise UserError(
                "an argument holds a URI with user:password: Ray would store and show it with the job; "
                "remove the credentials and give them to the cluster's nodes (docs/operations.md)"
            )
    return shlex.join(["python", "-m", "infra.cli", *argv])


def build_runtime_env(
    *, repo_root: Path = REPO_ROOT, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The runtime_env that ships this project and the MLflow settings to the job."""
    env = os.environ if environ is None else environ
    if not (repo_root / "pyproject.toml").is_file() or not (repo_root / "infra").is_dir():
        raise UserError(
            f"{repo_root} is not an incept source tree; `incept submit` ships the checkout it "
            "runs from, so run it from a clone (pip install -e .)"
        )
    env_vars = {name: env[name] for name in FORWARDED_ENV if env.get(name)}
    uri = env_vars.get("MLFLOW_TRACKING_URI", "")
    if uri:
        from infra.tracking import strip_userinfo

        env_vars["MLFLOW_TRACKING_URI"] = strip_userinfo(uri)
    if uri.startswith(("sqlite:", "file:", "/", ".")):
        log.warning(
            "MLFLOW_TRACKING_URI=%s is a local store: the job will write to that path on the "
            "cluster's node, not here; point it at an MLflow server for cluster runs",
            uri,
        )
    return {
        "working_dir": str(repo_root),
        "excludes": list(RUNTIME_ENV_EXCLUDES),
        "env_vars": env_vars,
    }


def validate_submission_id(submission_id: str) -> str:
    """`submission_id` unchanged if it is a usable job ID, else a UserError."""
    if not _ID_PATTERN.match(submission_id):
        raise UserError(
            f"job id {submission_id!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return submission_id


def new_submission_id(verb: str, *, now: dt.datetime | None = None) -> str:
    """A fresh, readable ID: `incept-VERB-YYYYmmddTHHMMSSZ-xxxxxx` (UTC, random suffix)."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    safe_verb = re.sub(r"[^A-Za-z0-9-]", "-", verb)[:30] or "job"
    return f"incept-{safe_verb}-{stamp}-{uuid.uuid4().hex[:6]}"


def redact(env_vars: Mapping[str, str] | None) -> dict[str, str]:
    """env_vars with the values of secrets replaced and URIs without user:password, for printing.

    Jobs submitted by other tools (or an older incept) may carry secrets in their runtime_env.
    """
    from infra.tracking import redact as redact_uri

    return {
        name: ("***" if any(m in name.upper() for m in _SECRET_MARKERS) else redact_uri(str(value)))
        for name, value in (env_vars or {}).items()
    }


# --- the client ------------------------------------------------------------------------


@contextlib.contextmanager
def _api_server_address(address: str) -> Iterator[None]:
    """Make `address` win inside the client's constructor.

    Ray's `get_address_for_submission_client` lets RAY_API_SERVER_ADDRESS, then RAY_ADDRESS,
    override the address argument (ray/dashboard/utils.py): with RAY_ADDRESS set to a GCS
    address for `ray.init`, an explicit --address would be ignored. Setting
    RAY_API_SERVER_ADDRESS to our choice for the constructor's duration, then restoring it,
    keeps --address authoritative.
    """
    before = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = before


def _client_class():
    """JobSubmissionClient with a timeout on every HTTP request.

    Ray's `SubmissionClient._do_request` calls `requests.request` with no timeout and forwards
    extra keyword arguments to it; a head behind a firewall that drops packets would hang
    every call. The override fills in the timeout. Built lazily so importing this module does
    not import Ray.
    """
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        def __init__(self, *args, timeouts: RequestTimeouts, **kwargs):
            # Set before super().__init__, whose connection check already sends requests.
            self._incept_timeouts = timeouts
            super().__init__(*args, **kwargs)

        def _do_request(self, method, endpoint, **kwargs):
            t = self._incept_timeouts
            kwargs.setdefault("timeout", (t.connect_s, t.read_s))
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobSubmissionClient


def _error_line(err: BaseException) -> str:
    """The first meaningful line of an exception's text (Ray puts tracebacks in some)."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line[:300]


def _translate(err: BaseException, address: str, what: str) -> UserError:
    """One UserError line for a failed request to the job server."""
    import requests
    from ray.exceptions import AuthenticationError

    if isinstance(err, AuthenticationError):
        # Ray's text starts "Authentication failed" for 403 (wrong token), "Authentication
        # required" for 401 (none sent): see format_authentication_http_error.
        if str(err).startswith("Authentication failed"):
            return UserError(
                f"{address} rejected the Ray auth token ({what}): set RAY_AUTH_TOKEN or "
                "RAY_AUTH_TOKEN_PATH to the cluster's token (`ray get-auth-token` on the head)"
            )
        return UserError(
            f"{address} requires a Ray auth token ({what}): set RAY_AUTH_TOKEN or "
            "RAY_AUTH_TOKEN_PATH, or write it to ~/.ray/auth_token "
            "(`ray get-auth-token` on the head prints it)"
        )
    if isinstance(err, (requests.exceptions.Timeout,)):
        return UserError(f"the Ray job server at {address} did not answer in time ({what})")
    if isinstance(err, (ConnectionError, requests.exceptions.ConnectionError)):
        return UserError(
            f"cannot reach the Ray job server at {address} ({what}): is the cluster up? "
            "For a remote head run `ray dashboard ray_cluster.yaml` or an SSH tunnel to 8265, "
            "or pass --address"
        )
    return UserError(f"Ray job server at {address}: {what} failed: {_error_line(err)}")


def connect(
    address: str | None = None,
    *,
    timeouts: RequestTimeouts = RequestTimeouts(),
    environ: Mapping[str, str] | None = None,
):
    """A connected `JobSubmissionClient` for `address` (see `resolve_address`).

    Sends the Ray auth token when one is found (`find_auth_token`). Fails with a UserError
    within `timeouts.connect_s` if the server cannot be reached.
    """
    url = resolve_address(address, environ)
    headers: dict[str, str] = {}
    found = find_auth_token(environ)
    if found:
        token, source = found
        headers["Authorization"] = f"Bearer {token}"
        log.debug("sending the Ray auth token from %s", source)
    cls = _client_class()
    try:
        with _api_server_address(url):
            return cls(url, headers=headers, timeouts=timeouts)
    except Exception as err:  # Ray raises bare RuntimeError/ConnectionError for everything
        raise _translate(err, url, "connect") from None


def _call(client, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except UserError:
        raise
    except Exception as err:
        raise _translate(err, client.get_address(), what) from None


def submit(
    client,
    argv: Sequence[str],
    *,
    submission_id: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Submit `incept ARGV...` as a job; returns its submission ID.

    With `submission_id`, an ID the cluster already knows is refused with a UserError naming
    the existing job's status: a repeated submission never runs twice.
    """
    if not argv:
        build_entrypoint(argv)  # raises the "nothing to submit" error
    verb = argv[0]
    job_id = validate_submission_id(submission_id) if submission_id else new_submission_id(verb)
    if submission_id:
        existing = job_status_or_none(client, job_id)
        if existing is not None:
            raise UserError(
                f"job {job_id} was already submitted (status {existing}); "
                f"not submitting it again: see `incept jobs status {job_id}` or choose another --id"
            )
    meta = {
        "incept_verb": verb,
        "submitted_by": _user(),
        "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(metadata or {}),
    }
    env = runtime_env if runtime_env is not None else build_runtime_env()
    entrypoint = build_entrypoint(argv)
    try:
        return client.submit_job(
            entrypoint=entrypoint, submission_id=job_id, runtime_env=env, metadata=meta
        )
    except Exception as err:
        # Lost the race with another submitter between the check above and here: Ray answers
        # with a 500 whose text says the ID exists.
        if "already exists" in str(err):
            raise UserError(
                f"job {job_id} was already submitted; not submitting it again "
                f"(see `incept jobs status {job_id}`)"
            ) from None
        raise _translate(err, client.get_address(), "submit") from None


def job_status_or_none(client, job_id: str) -> str | None:
    """The job's status name, or None when the cluster has no job with this ID."""
    try:
        return str(client.get_job_status(job_id))
    except Exception as err:
        if "does not exist" in str(err) or "404" in str(err):
            return None
        raise _translate(err, client.get_address(), f"status of {job_id}") from None


def job_status(client, job_id: str) -> str:
    """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    status = job_status_or_none(client, job_id)
    if status is None:
        raise UserError(f"no job {job_id} on {client.get_address()}; `incept jobs list` shows them")
    return status


def _job_dict(info) -> dict[str, Any]:
    """A JobDetails/JobInfo as plain JSON-able data, secrets redacted."""
    runtime_env = dict(getattr(info, "runtime_env", None) or {})
    if "env_vars" in runtime_env:
        runtime_env["env_vars"] = redact(runtime_env["env_vars"])

    def when(ms):
        return (
            dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")
            if ms
            else None
        )

    return {
        "submission_id": info.submission_id,
        "job_id": getattr(info, "job_id", None),
        "status": str(info.status),
        "message": info.message,
        "entrypoint": _CREDENTIALS_IN_URI.sub(lambda m: m.group(0).split("://")[0] + "://***@", info.entrypoint or ""),
        "start_time": when(info.start_time),
        "end_time": when(info.end_time),
        "driver_exit_code": getattr(info, "driver_exit_code", None),
        "metadata": dict(info.metadata or {}),
        "runtime_env": runtime_env,
    }


def job_info(client, job_id: str) -> dict[str, Any]:
    """Everything the cluster knows about one job (see `_job_dict` for the keys)."""
    if job_status_or_none(client, job_id) is None:
        raise UserError(f"no job {job_id} on {client.get_address()}; `incept jobs list` shows them")
    return _job_dict(_call(client, f"info of {job_id}", lambda: client.get_job_info(job_id)))


def list_jobs(client) -> list[dict[str, Any]]:
    """Submitted jobs (not bare drivers), newest first."""
    jobs = _call(client, "list", client.list_jobs)
    rows = [_job_dict(j) for j in jobs if getattr(j, "submission_id", None)]
    return sorted(rows, key=lambda r: r["start_time"] or "", reverse=True)


def job_logs(client, job_id: str) -> str:
    """The job's whole log so far."""
    job_status(client, job_id)
    return _call(client, f"logs of {job_id}", lambda: client.get_job_logs(job_id))


def stop_job(client, job_id: str) -> bool:
    """Ask the job to stop; True if it was running."""
    job_status(client, job_id)
    return bool(_call(client, f"stop {job_id}", lambda: client.stop_job(job_id)))


def wait_for_job(
    client,
    job_id: str,
    *,
    out: IO[str] | None = sys.stderr,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    max_poll_failures: int = 30,
) -> str:
    """Follow the job to its end; returns its final status name.

    With `out`, the log is streamed to it as it grows (Ray's websocket tail); if the stream
    breaks, or without `out`, the status is polled every `poll_s` seconds. Up to
    `max_poll_failures` failed polls in a row are tolerated (a head restarting, a network blip)
    before giving up with a UserError.
    """
    if out is not None:
        # The log stream has no read timeout on purpose: a training job may print nothing for
        # an hour. Its connect has one (aiohttp's default), and every status poll below has ours.
        try:
            asyncio.run(_stream_logs(client, job_id, out))
        except Exception as err:  # the websocket dropped: the job goes on, so poll
            log.warning("log stream for %s broke (%s); polling its status", job_id, _error_line(err))
    failures = 0
    while True:
        try:
            status = job_status(client, job_id)
            failures = 0
        except UserError as err:
            failures += 1
            if failures >= max_poll_failures:
                raise UserError(
                    f"lost track of job {job_id} after {failures} failed status checks: {err}"
                ) from None
            log.warning("status check for %s failed (%s); retrying", job_id, err)
            sleep(poll_s)
            continue
        if status in TERMINAL_STATUSES:
            return status
        sleep(poll_s)


async def _stream_logs(client, job_id: str, out: IO[str]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "unknown"
