"""incept train --config FILE [key=value ...]: Ray Train, MLflow, multi-crop evaluation, registration."""

from __future__ import annotations

from infra import config as config_module
from infra.output import emit


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train Inception-v3 with Ray Train; evaluate and register the result",
        description="Train with the config file's recipe; `section.key=value` arguments override it "
        "(e.g. train.epochs=3 optim.lr=0.01). Rerunning with the same train.run_name resumes.",
    )
    p.add_argument("--config", help="YAML config (configs/imagenet.yaml, configs/demo.yaml); defaults without")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--json", action="store_true", help="print run id, model version, metrics and checkpoint as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from infra.training import train

    config = config_module.load(args.config, args.overrides)
    outcome = train(config, config_path=args.config)
    metrics = " ".join(f"{k} {v:.3f}" for k, v in outcome["metrics"].items())
    version = f"registered version {outcome['model_version']} as challenger" if outcome["model_version"] else "not registered"
    emit(outcome, as_json=args.json, human=f"trained {outcome['run_name']}: {metrics or 'no evaluation'}; {version}; checkpoint {outcome['checkpoint']}")
    return 0
