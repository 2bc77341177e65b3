"""incept evaluate MODEL --shards URI --crops 1,10,12,144: multi-crop evaluation with Ray Data."""

from __future__ import annotations

from infra.output import emit


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="multi-crop evaluation of a checkpoint or a registered model",
        description="Average softmax over each image's crops and report top-1/top-5 per protocol. With a "
        "registry reference (inception-v3@champion, inception-v3/3) the metrics are written to that version.",
    )
    p.add_argument("model", help="checkpoint folder, or registry reference NAME@alias / NAME/VERSION")
    p.add_argument("--shards", required=True, help="folder of validation shards with manifest.json")
    p.add_argument("--crops", default="1", help="comma-separated protocols: 1, 10, 12, 144 (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (each expands to its crops)")
    p.add_argument("--max-crops-per-forward", type=int, default=0,
                   help="crops per model call, bounding memory whatever the batch and protocol (default 0: 256 on CPU, 1,024 on GPU)")
    p.add_argument("--concurrency", type=int, default=0, help="evaluation actors, one model each (default 0: one per CPU, or per GPU with --gpu, at most one per shard)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    from infra.evaluation import evaluate_model

    crops = [c.strip() for c in args.crops.split(",") if c.strip()]
    result = evaluate_model(args.model, args.shards, crops, batch_size=args.batch_size,
                            max_crops_per_forward=args.max_crops_per_forward, concurrency=args.concurrency, use_gpu=args.gpu)
    lines = [f"{k:>14} {v:.4f}" for k, v in result["metrics"].items()]
    emit(result, as_json=args.json, human="\n".join(lines))
    return 0
