"""`incept jobs list|status ID|logs ID|stop ID`: look at and stop jobs on a Ray cluster."""

from __future__ import annotations

import argparse
import sys

from infra.commands.submit import AUTH_EPILOG, add_address_argument
from infra.output import emit


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "jobs",
        help="list Ray jobs, show one's status or logs, stop one",
        description="Jobs on a Ray cluster's job server (see `incept submit --help` for the "
        "address and token rules).",
    )
    sub = p.add_subparsers(dest="jobs_action", metavar="ACTION", required=True)

    def action(name: str, help_: str, *, with_id: bool, with_json: bool):
        a = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=AUTH_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_address_argument(a)
        if with_id:
            a.add_argument("job_id", metavar="ID", help="the job's submission ID")
        if with_json:
            a.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return a

    action("list", "list submitted jobs, newest first", with_id=False, with_json=True)
    action("status", "show one job's status and details", with_id=True, with_json=True)
    logs = action("logs", "print a job's log on stdout", with_id=True, with_json=False)
    logs.add_argument(
        "--follow", "-f", action="store_true", help="keep printing until the job ends"
    )
    action("stop", "ask a job to stop", with_id=True, with_json=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from infra import jobs

    client = jobs.connect(args.address)
    if args.jobs_action == "list":
        rows = jobs.list_jobs(client)
        human = "\n".join(
            f"{r['submission_id']}  {r['status']:<9}  {r['start_time'] or '-'}  {r['entrypoint']}"
            for r in rows
        )
        emit(
            {"address": client.get_address(), "jobs": rows},
            as_json=args.json,
            human=human or "no jobs",
        )
        return 0
    if args.jobs_action == "status":
        info = jobs.job_info(client, args.job_id)
        human = (
            f"{info['submission_id']}  {info['status']}  {info['message'] or ''}\n"
            f"  entrypoint: {info['entrypoint']}\n"
            f"  started: {info['start_time'] or '-'}  ended: {info['end_time'] or '-'}"
        )
        emit(info, as_json=args.json, human=human)
        return 0
    if args.jobs_action == "logs":
        if args.follow:
            status = jobs.wait_for_job(client, args.job_id, out=sys.stdout)
            print(f"incept jobs: {args.job_id} {status}", file=sys.stderr)
        else:
            sys.stdout.write(jobs.job_logs(client, args.job_id))
            sys.stdout.flush()
        return 0
    if args.jobs_action == "stop":
        stopped = jobs.stop_job(client, args.job_id)
        human = (
            f"{args.job_id}: stop requested"
            if stopped
            else f"{args.job_id}: not running (nothing to stop)"
        )
        emit({"submission_id": args.job_id, "stopped": stopped}, as_json=args.json, human=human)
        return 0
    raise AssertionError(f"unhandled jobs action {args.jobs_action!r}")
