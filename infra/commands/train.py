"""incept train --config FILE [key=value ...]: Ray Train, MLflow, multi-crop evaluation, registration.

`--dry-run` prints the resolved run instead (trainers/plan.py) and starts neither Ray nor MLflow.
"""

from __future__ import annotations

from infra import config as config_module
from infra.output import emit
from pipelines.errors import UserError


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
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved run (batches, steps, learning rate, EMA, checkpoints, shards, departures from "
                   "the large-batch reference) and exit; starts neither Ray nor MLflow")
    p.add_argument("--assume-samples", type=int, metavar="N",
                   help="with --dry-run: plan for N training images instead of reading data.train's manifest")
    p.set_defaults(func=run)


def run(args) -> int:
    config = config_module.load(args.config, args.overrides)
    if args.assume_samples is not None and not args.dry_run:
        raise UserError("--assume-samples only applies with --dry-run: a run counts its images from data.train's manifest")
    if args.dry_run:
        return dry_run(config, assume_samples=args.assume_samples, as_json=args.json)

    from infra.training import train

    outcome = train(config, config_path=args.config)
    metrics = " ".join(f"{k} {v:.3f}" for k, v in outcome["metrics"].items())
    version = f"registered version {outcome['model_version']} as challenger" if outcome["model_version"] else "not registered"
    emit(outcome, as_json=args.json, human=f"trained {outcome['run_name']}: {metrics or 'no evaluation'}; {version}; checkpoint {outcome['checkpoint']}")
    return 0


def dry_run(config: config_module.Config, *, assume_samples: int | None, as_json: bool) -> int:
    from pipelines import manifest
    from trainers.plan import plan

    if assume_samples is not None:
        if assume_samples <= 0:
            raise UserError(f"--assume-samples must be a positive number of training images, got {assume_samples}")
        num_samples, num_shards, source = assume_samples, None, "--assume-samples"
    elif not config.data.train:
        raise UserError("data.train is empty: set it to the training shards, or plan without them: --dry-run --assume-samples N")
    else:
        train_manifest = manifest.read(config.data.train)
        num_samples = train_manifest["num_samples"]
        num_shards = sum(1 for s in train_manifest["shards"] if s["num_samples"] > 0)  # the shards the loader reads
        source = f"{config.data.train}/{manifest.MANIFEST}"
    resolved = {"samples_from": source, **plan(config.recipe, num_samples=num_samples, num_shards=num_shards)}
    emit(resolved, as_json=as_json, human=_table(resolved))
    return 0


def _table(p: dict) -> str:
    """The plan as aligned `name  value` rows, then the departures."""
    lr = ", ".join(f"{e['epoch']:g}: {e['lr']:.4g}" for e in p["lr_at"])
    resolution = ", ".join(f"{r} px from epoch {e}" for e, r in p["resolution_schedule"])
    shards = (f"{p['shards']:,} shards, {p['shards_per_worker']:.3g} per worker ({p['shards_note']})" if p["shards"] is not None
              else p["shards_note"])
    rows = [
        ("training images", f"{p['num_samples']:,} ({p['samples_from']}); {p['images_dropped_per_epoch']:,} left out per epoch"),
        ("batch", f"{p['num_workers']} workers x {p['per_worker_batch']} = {p['global_batch']:,} global"),
        ("steps", f"{p['steps_per_epoch']:,} per epoch x {p['epochs']} epochs = {p['total_steps']:,}"),
        ("base lr", f"{p['base_lr']:.4g} ({p['base_lr_rule']}); floor {p['lr_floor']:.3g}"),
        ("lr at epoch", lr or "no steps"),
        ("ema decay", f"{p['ema_decay']:.6g} per step; horizon {p['ema_horizon_steps']:,.0f} steps = {p['ema_horizon_epochs']:.3g} epochs; "
                      f"full decay from step {p['ema_warmup_steps']:,}" if p["ema_decay"] else "off"),
        ("checkpoints", "every epoch" if p["checkpoint_interval_epochs"] == 1 else f"every {p['checkpoint_interval_epochs']:.3g} epochs"),
        ("resolution", resolution),
        ("shards", shards),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    departures = p["departures"]
    lines.append(f"{'departures'.ljust(width)}  " + ("none from the large-batch reference" if not departures
                                                     else f"{len(departures)} from the large-batch reference:"))
    lines += [f"  - {d}" for d in departures]
    return "\n".join(lines)
