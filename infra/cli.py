"""The `incept` command line: one verb per module under `infra/commands/`.

Each verb module exposes `add_parser(subparsers)`, which registers the verb and sets
`func=run` on it. A verb's `run(args)` returns the exit status. Verbs that produce a result
accept `--json` and print one JSON object on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipelines.errors import UserError

# In the order `incept --help` lists them. A new verb is a new module and a new line here.
VERBS = (
    "sample_data",
    "shard",
    "verify_shards",
    "train",
    "evaluate",
    "submit",
    "jobs",
    "schedule",
    "retrain",
    "registry",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incept",
        description="Train Inception-v3 at ImageNet scale on Ray; register and serve it with MLflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERBS:
        importlib.import_module(f"infra.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"incept {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"incept {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
