"""`incept schedule --cron EXPR [--submit [--address URL]] [--state FILE] [--once] -- RETRAIN_ARGS...`"""

from __future__ import annotations

import argparse
from pathlib import Path

from infra.commands.submit import ADDRESS_HELP
from infra.output import emit
from pipelines.errors import UserError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "schedule",
        help="run `incept retrain` on a cron schedule",
        description=(
            "Run `incept retrain RETRAIN_ARGS` at each time the cron expression names (UTC), "
            "as a local subprocess or, with --submit, as a Ray job on a cluster. Runs missed "
            "while the scheduler was down are coalesced into one run; a scheduler with no "
            "state starts with the next slot. State (the last slot done, the last outcome) "
            "survives restarts in --state; a lock beside it keeps a second scheduler off it."
        ),
        epilog=(
            "examples:\n"
            '  incept schedule --cron "0 3 * * 0" -- --src /data/imagenet --config configs/imagenet.yaml\n'
            '  incept schedule --cron "0 3 * * 0" --submit --address http://HEAD:8265 -- \\\n'
            "      --src s3://bucket/imagenet --config configs/imagenet.yaml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--cron",
        required=True,
        metavar="EXPR",
        help='5-field cron expression in UTC, e.g. "0 3 * * 0" (Sundays 03:00)',
    )
    p.add_argument(
        "--submit",
        action="store_true",
        help="submit each run as a Ray job (job ID fixed per slot) instead of a local subprocess",
    )
    p.add_argument("--address", metavar="URL", help=f"with --submit: {ADDRESS_HELP}")
    p.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="state file (default: $INCEPT_WORKDIR/schedule-state.json, or ./work/...)",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="do one run (now if one is due or was missed, else at the next slot), then exit "
        "with its status: 0 succeeded, 1 failed",
    )
    p.add_argument(
        "--run-timeout",
        type=float,
        metavar="SECONDS",
        help="kill a local run after this long (default: none; a retrain can run for days)",
    )
    p.add_argument("--json", action="store_true", help="with --once: print the run as one JSON object")
    p.add_argument(
        "retrain_args",
        nargs=argparse.REMAINDER,
        metavar="-- RETRAIN_ARGS",
        help="arguments for `incept retrain`, after `--`",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from infra import schedule

    retrain_args = args.retrain_args[1:] if args.retrain_args[:1] == ["--"] else args.retrain_args
    if not retrain_args:
        raise UserError("give the retrain arguments after `--`, e.g. -- --src DIR --config FILE")
    if args.address and not args.submit:
        raise UserError("--address only applies with --submit")
    if args.json and not args.once:
        raise UserError("--json needs --once: a running scheduler logs its runs on stderr")
    if args.run_timeout is not None and args.submit:
        raise UserError("--run-timeout applies to local runs; stop a Ray job with `incept jobs stop`")
    schedule.validate_cron(args.cron)
    state_path = args.state or schedule.default_state_path()

    if args.submit:
        from infra import jobs

        jobs.connect(args.address)  # fail now, not at 03:00 on Sunday, if the cluster is unreachable
        runner = schedule.submit_runner(retrain_args, cron=args.cron, address=args.address)
    else:
        runner = schedule.local_runner(retrain_args, timeout_s=args.run_timeout)

    record = schedule.run_scheduler(
        cron=args.cron, runner=runner, state_path=state_path, once=args.once
    )
    if record is None:  # only --once returns
        return 0
    emit(
        {**record, "state": str(state_path)},
        as_json=args.json,
        human=f"slot {record['slot']}: {record['outcome']} ({record['detail']})",
    )
    return 0 if record["outcome"] == "succeeded" else 1
