"""incept retrain --src DIR --config FILE [key=value ...]: one retraining cycle (infra/retrain.py)."""

from __future__ import annotations

from infra import config as config_module
from infra.output import emit
from pipelines.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "retrain",
        help="one retraining cycle: shard, train a challenger, promote it only if it beats the champion",
        description="Shard --src into --shards or WORKDIR/shards (resumable); stop with 'no new data' if the champion was "
        "trained on the same data; else train with the config (data.train/data.val set to those shards), "
        "evaluate the champion on the same validation shards with eval.crops, and promote the challenger "
        "only if retrain.metric beats the champion's by more than retrain.margin. One cycle per work "
        "directory at a time; a second exits with status 2.",
    )
    p.add_argument("--src", required=True, help="data set root in ILSVRC-2012 layout (ROOT/train/<wnid>/..., ROOT/val/...), or ImageNet's archives")
    p.add_argument("--config", required=True, help="YAML training config (configs/imagenet.yaml, configs/demo.yaml)")
    p.add_argument("--workdir", help="the cycle lock, and the shards unless --shards (default: $INCEPT_WORKDIR/retrain)")
    p.add_argument("--shards", metavar="URI", help="where the cycle writes its train/ and val/ shards: a local folder or "
                   "s3://... that every node of a cluster reads (default: WORKDIR/shards)")
    p.add_argument("--shard-size", type=int, help="samples per shard (default 1000)")
    p.add_argument("--reshard", action="store_true", help="shard the whole source again; by default a cycle appends the images "
                   "that are new since the last cycle to new shards and leaves the earlier shards as they are")
    p.add_argument("--force", action="store_true", help="train and compare even if the champion was trained on the same data")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides (train.epochs=3 retrain.margin=0.005)")
    p.add_argument("--json", action="store_true", help="print the decision as one JSON object")
    p.set_defaults(func=run)


def _human(o: dict) -> str:
    if o["decision"] == "skipped":
        return f"not promoted: {o['reason']}"
    head = f"promoted version {o['version']} to champion" if o["promoted"] else f"not promoted: version {o['version']} ({o['decision']})"
    champion = f"{o['champion']:.4f} (version {o['champion_version']})" if o["champion"] is not None else "none"
    return f"{head}: {o['reason']}; {o['metric']}: challenger {o['challenger']:.4f}, champion {champion}"


def run(args) -> int:
    from infra.retrain import retrain

    if args.shard_size is not None and args.shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {args.shard_size}")
    config = config_module.load(args.config, args.overrides)
    outcome = retrain(args.src, config, config_path=args.config, workdir=args.workdir, shards=args.shards, shard_size=args.shard_size, force=args.force,
                      reshard=args.reshard)
    emit(outcome, as_json=args.json, human=_human(outcome))
    return 0
