"""`incept submit [--address URL] [--wait] [--id ID] -- VERB ARGS...`: run a verb as a Ray job."""

from __future__ import annotations

import argparse
import sys

from infra.output import emit
from pipelines.errors import UserError

ADDRESS_HELP = (
    "the Ray dashboard URL of the cluster (job server), e.g. http://HEAD:8265; default: "
    "RAY_API_SERVER_ADDRESS, else RAY_ADDRESS when it is an http(s) URL, else "
    "http://127.0.0.1:8265 (a remote head: `ray dashboard ray_cluster.yaml` forwards it there)"
)

AUTH_EPILOG = """\
token authentication (Ray >= 2.52):
  A cluster in token mode answers 401 without its token. incept sends the token it finds
  first in RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token
  (Ray's own order), unless RAY_AUTH_MODE=disabled; RAY_AUTH_MODE=token with no token is an
  error. `ray get-auth-token` on the head prints the cluster's token. The token is only sent
  as a request header; it is never put into the job's environment.

what travels with the job:
  working_dir = this source tree without .venv, work/, .git, data/, caches, *.tar, mlruns,
  mlflow.db; env_vars = MLFLOW_TRACKING_URI (without any user:password) and INCEPT_WORKDIR
  where set. Ray stores a job's env_vars and command line with the job and shows them to
  anyone who can list jobs, so no credential travels: the cluster's nodes hold their own
  MLflow and object-store credentials (docs/operations.md), and a command line with a
  user:password URI in it is refused.

examples:
  incept submit --wait -- train --config configs/imagenet.yaml
  incept submit --id train-2025-01 -- train --config configs/imagenet.yaml run_name=r1
"""


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", metavar="URL", help=ADDRESS_HELP)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "submit",
        help="run any incept verb as a Ray job on a cluster",
        description=(
            "Submit `incept VERB ARGS...` to a Ray cluster as a job: the entrypoint is "
            "`python -m infra.cli VERB ARGS...`, run in this source tree shipped as the job's "
            "working_dir. Exit status: 0 once submitted; with --wait, 0 if the job SUCCEEDED "
            "and 1 otherwise; 2 for a usage or connection error."
        ),
        epilog=AUTH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_address_argument(p)
    p.add_argument(
        "--wait",
        action="store_true",
        help="stream the job's log to stderr until it ends; exit 0 if it SUCCEEDED, else 1",
    )
    p.add_argument(
        "--id",
        dest="submission_id",
        metavar="ID",
        help="the job's submission ID (letters, digits, '.', '_', '-'); a second submission "
        "with an ID the cluster knows is refused, so retries never run a job twice "
        "(default: incept-VERB-TIME-RANDOM)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- VERB ARGS",
        help="the incept verb and its arguments, after `--`",
    )
    p.set_defaults(func=run)


def verb_argv(command: list[str]) -> list[str]:
    """The verb and its arguments from the REMAINDER, checked against the CLI's verbs."""
    from infra.cli import VERBS  # here, not at the top: infra.cli imports this module

    argv = command[1:] if command[:1] == ["--"] else list(command)
    if not argv or argv[0].startswith("-"):
        raise UserError("give the verb to run after `--`, e.g. `incept submit -- train --config FILE`")
    if argv[0].replace("-", "_") not in VERBS:
        known = ", ".join(v.replace("_", "-") for v in VERBS)
        raise UserError(f"unknown verb {argv[0]!r} to submit; known verbs: {known}")
    return argv


def run(args: argparse.Namespace) -> int:
    from infra import jobs

    argv = verb_argv(args.command)
    client = jobs.connect(args.address)
    job_id = jobs.submit(client, argv, submission_id=args.submission_id)
    address = client.get_address()
    print(f"incept submit: job {job_id} submitted to {address}", file=sys.stderr)
    result = {"submission_id": job_id, "address": address, "argv": argv}
    if not args.wait:
        emit(result, as_json=args.json, human=job_id)
        return 0
    try:
        status = jobs.wait_for_job(client, job_id, out=sys.stderr)
    except KeyboardInterrupt:
        print(
            f"incept submit: stopped following; job {job_id} keeps running "
            f"(`incept jobs logs {job_id}`, `incept jobs stop {job_id}`)",
            file=sys.stderr,
        )
        raise
    result["status"] = status
    emit(result, as_json=args.json, human=f"{job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1
