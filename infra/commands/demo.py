"""incept demo: sample data -> shards -> train -> evaluate -> register -> look up and predict."""

from __future__ import annotations

import os
from pathlib import Path

from infra.output import emit


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole flow on one machine, with embedded defaults",
        description="Sample digits, shard them with Ray Data, train with configs/demo.yaml on 2 CPU workers, "
        "evaluate (1, 10, 144 crops), register, promote to champion when there is none, and predict.",
    )
    p.add_argument("--workdir", default=None, help="where data, shards, runs and the MLflow store go (default: $INCEPT_WORKDIR or ./work)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of configs/demo.yaml, e.g. train.epochs=2")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.workdir:
        os.environ["INCEPT_WORKDIR"] = str(Path(args.workdir).resolve())
    from infra import tracking
    from infra.demo import run_demo

    result = run_demo(workdir=tracking.workdir(), overrides=args.overrides)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items())
    top = ", ".join(f"{words} {p:.2f}" for _, words, p in result["prediction"]["top5"][:3])
    emit(result, as_json=args.json, human=(
        f"registered version {result['version']} ({metrics}); champion is version {result['champion']}\n"
        f"predict {Path(result['prediction']['image']).name}: {top}\n"
        f"look it up: incept registry show inception-v3@champion   (MLflow store: {result['tracking_uri']})\n"
        f"done in {result['seconds']:.0f} s"))
    return 0
