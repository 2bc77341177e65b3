"""incept verify-shards URI: every shard's sha256, size and sample count against the manifest."""

from __future__ import annotations

import sys
from dataclasses import asdict

from infra.output import emit
from pipelines.verify import verify


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify-shards",
        help="check every shard against manifest.json",
        description="Recompute each shard's sha256 and sample count; exit 1 naming each bad or missing shard.",
    )
    p.add_argument("uri", help="folder holding manifest.json and the shards (local path, s3://, gs://)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    result = verify(args.uri)
    for problem in result.problems:
        print(f"bad shard: {problem}", file=sys.stderr)
    status = "ok" if result.ok else f"{len(result.problems)} problems"
    emit({**asdict(result), "ok": result.ok}, as_json=args.json, human=f"{result.checked} shards checked in {args.uri}: {status}")
    return 0 if result.ok else 1
