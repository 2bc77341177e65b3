"""incept shard: an ImageNet split into WebDataset shards with Ray Data."""

from __future__ import annotations

from dataclasses import asdict

from infra.output import emit
from infra.ray_runtime import init_ray
from pipelines.errors import UserError
from pipelines.shard import ShardOptions, plan_job, run_job


def add_parser(sub) -> None:
    defaults = ShardOptions()
    p = sub.add_parser(
        "shard",
        help="shard an ImageNet split into WebDataset tars (Ray Data; resumable)",
        description="Write {prefix}-{split}-{index:06d}.tar shards and manifest.json. Rerunning the same "
        "command after an interruption writes only the missing or damaged shards.",
    )
    p.add_argument("--src", required=True, help="data set root: extracted in ILSVRC-2012 layout (ROOT/train/<wnid>/...), "
                   "or holding ImageNet's archives as shipped (ILSVRC2012_img_train.tar, _img_val.tar, devkit_t12.tar.gz), read in place")
    p.add_argument("--split", required=True, choices=("train", "val"))
    p.add_argument("--out", required=True, help="output folder: a local path, s3://... or gs://...")
    p.add_argument("--shard-size", type=int, default=defaults.shard_size, help=f"samples per shard (default {defaults.shard_size})")
    p.add_argument("--max-side", type=int, default=None, help="downscale images whose longer side exceeds this many pixels (default: off)")
    p.add_argument("--quality", type=int, default=defaults.quality, help=f"JPEG quality for converted images (default {defaults.quality})")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the shuffle assigning samples to shards")
    p.add_argument("--prefix", default=defaults.prefix, help=f"shard name prefix (default {defaults.prefix})")
    p.add_argument("--exclude", metavar="FILE", help="leave out the images FILE lists: 1-based validation image numbers, one per "
                   "line (the ILSVRC2014 blacklist's form), or file names; listed in the manifest as skipped, reason excluded")
    p.add_argument("--append", action="store_true", help="shard only images an earlier run into --out has not, into new shards; "
                   "existing shards stay byte-identical (refused if sharded images changed or vanished, classes or options differ)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs to use (default: all of the local machine or cluster)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {args.shard_size}")
    if args.max_side is not None and args.max_side < 1:
        raise UserError(f"--max-side must be a positive number of pixels, got {args.max_side}")
    if not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be 1 to 100, got {args.quality}")
    options = ShardOptions(shard_size=args.shard_size, max_side=args.max_side, quality=args.quality, seed=args.seed, prefix=args.prefix,
                           exclude=args.exclude, append=args.append)
    job = plan_job(args.src, args.split, args.out, options)  # input errors surface before Ray starts
    if job.todo:
        init_ray(num_cpus=args.num_cpus)  # an append with nothing new, or a finished run, needs no Ray
    result = run_job(job, concurrency=args.num_cpus)
    emit(asdict(result), as_json=args.json, human=result.summary())
    return 0
