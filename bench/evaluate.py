"""Multi-crop evaluation throughput: `evaluate_shards` (Ray Data actor pool) against a plain loop.

Both evaluate the same shards with the same checkpoint: a small-width Inception-v3 with random
weights, saved by trainers.checkpoint.save in the layout training writes (model, ema, recipe,
data_config). The plain loop is one process running the same `CropPredictor` over the tar files in
order (read with tarfile), so the two differ only in how the work is spread: Ray's `concurrency`
actors, one torch thread each, against one process whose torch uses every core.

Ray gets as many CPUs as there are actors: the read is fused into the actors (trainers/evaluate.py),
so it needs none of its own. (Before the fusion, a pool holding every CPU starved the read tasks and
waited forever, and this benchmark gave Ray one logical CPU more than the actors.)

Crops/s = images x crops per image / seconds; per CPU-second = crops per second of CPU: for Ray,
of every process involved (driver, raylet, GCS, actors; read from /proc as bench/loader.py does),
for the plain loop, of its own process (all its torch threads). Ray's start-up is left out; each
evaluate_shards call starts its actors and loads the model in each, and that stays in (a fresh
pool per evaluation is what the code does); the start-up probe row shows what it costs alone.

    python bench/evaluate.py [--images 80] [--images-144 4] [--width 0.25] [--concurrency 2] [--plain-threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loader import load, read_tar, tree_cpu_seconds  # noqa: E402  (bench/loader.py, beside this file)

CROPS = {"1": 1, "10": 10, "144": 144}
# Images per forward batch: each image expands to its protocol's crops (144 x 299 x 299 x 3 floats
# is 150 MB before the first layer), so the batch shrinks as the protocol grows.
BATCH = {"1": 16, "10": 4, "144": 1}


def prepare_shards(root: str, *, images: int, shard_size: int, num_cpus: int) -> str:
    """`images` generated JPEGs sharded by `incept shard` under `root`, made once. Ray must be up."""
    from pipelines.sample_data import make_sample_set
    from pipelines.shard import ShardOptions, plan_job, run_job

    src = Path(root, f"evaluate-src-{images}")
    out = Path(root, f"evaluate-shards-{images}-{shard_size}")
    if Path(out, ".complete").exists():
        return str(out)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    classes = max(c for c in range(1, 11) if images % c == 0)  # exactly `images`
    make_sample_set(src, classes=classes, train_per_class=images // classes, val_per_class=0, source="digits")
    run_job(plan_job(str(src), "train", str(out), ShardOptions(shard_size=shard_size)), concurrency=num_cpus)
    shutil.rmtree(src)
    Path(out, ".complete").touch()
    return str(out)


def make_checkpoint(folder: str, uri: str, *, width: float) -> str:
    """A random-weight checkpoint in training's layout (trainers/checkpoint.py's docstring)."""
    from pipelines import manifest
    from trainers import checkpoint
    from trainers.config import ModelSection, Recipe
    from trainers.ema import ModelEma
    from trainers.fit import data_config
    from trainers.inception_v3 import inception_v3

    recipe = Recipe(model=ModelSection(width=width))
    config = data_config(recipe, manifest.read(uri))  # classes, words, resolution, crop_fraction, mean, std
    m = recipe.model
    model = inception_v3(num_classes=len(config["classes"]), aux_logits=m.aux_logits, resolution=m.variant, width=m.width, dropout=m.dropout)
    checkpoint.save(folder, {
        "model": model.state_dict(),
        "ema": ModelEma(model, recipe.optim.ema_decay).state_dict(),
        "optimizer": None,
        "epoch": 0,
        "epoch_step": 0,
        "step": 0,
        "recipe": asdict(recipe),
        "data_config": config,
    })
    return folder


def plain_loop(loader, uri: str, crops: str, *, batch_size: int) -> dict[str, float]:
    """The same predictor in this process, over the shards in order; the same result keys as evaluate_shards."""
    import numpy as np

    from pipelines import manifest
    from trainers.evaluate import CropPredictor

    predictor = CropPredictor(loader, [crops])
    sums = {"top1": 0, "top5": 0}
    count = 0

    def run(samples: list[dict]) -> None:
        nonlocal count
        out = predictor.predict({"jpg": np.array([s["jpg"] for s in samples], dtype=object), "cls": np.array([s["cls"] for s in samples], dtype=object)})
        count += len(samples)
        for k in sums:
            sums[k] += int(out[f"{k}_{crops}"].sum())

    pending: list[dict] = []
    for shard in manifest.shard_uris(uri, manifest.read(uri)):
        for sample in read_tar(shard):
            pending.append(sample)
            if len(pending) == batch_size:
                run(pending)
                pending = []
    if pending:
        run(pending)
    return {f"{k}_{crops}crop": v / count for k, v in sums.items()}


def timed(fn, *, tree: bool) -> tuple[dict, float, float | None]:
    """(result, wall seconds, CPU seconds): of the whole process tree (Ray: driver, raylet, actors) or of this process.

    The plain loop counts this process only: Ray is up meanwhile, and the previous pool's actors,
    reaped by the raylet as they exit, would land their whole lifetime's CPU in the tree's count.
    """
    cpu = tree_cpu_seconds() if tree else time.process_time()
    t = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t
    after = tree_cpu_seconds() if tree else time.process_time()
    return result, wall, None if cpu is None else after - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=80, help="images for protocols 1 and 10")
    parser.add_argument("--images-144", type=int, default=4, help="images for protocol 144")
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--width", type=float, default=0.25, help="channel multiplier of the random-weight model")
    parser.add_argument("--plain-threads", type=int, default=None, help="torch threads of the plain loop (default: torch's, one per core)")
    parser.add_argument("--data", default="work/bench", help="shards are generated once under DATA/evaluate-*")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count(), help="actors in the pool, one CPU each (Ray gets exactly that many)")
    args = parser.parse_args()

    import ray
    import ray.data
    import torch

    from trainers.evaluate import CheckpointModel, evaluate_shards

    if args.plain_threads:
        torch.set_num_threads(args.plain_threads)  # this process only: Ray's actors set their own (1 each)

    t = time.perf_counter()
    ray.init(address="local", num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - t
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        sets = {
            "1": prepare_shards(args.data, images=args.images, shard_size=args.shard_size, num_cpus=args.concurrency),
            "144": prepare_shards(args.data, images=args.images_144, shard_size=max(1, args.images_144 // 2), num_cpus=args.concurrency),
        }
        sets["10"] = sets["1"]
        ckpt = make_checkpoint(str(Path(args.data, f"evaluate-ckpt-w{args.width}")), sets["1"], width=args.width)
        loader = CheckpointModel(ckpt)
        print(f"# {os.cpu_count()} CPUs; Ray: {args.concurrency} actors x 1 CPU (num_cpus={args.concurrency}); plain loop: 1 process, {torch.get_num_threads()} torch threads")
        print(f"# model: Inception-v3 width {args.width}, random weights, 299 x 299; Ray start-up (excluded) {startup:.1f} s")

        rows = []
        # Start-up probe: the smallest job, dominated by starting the actors and loading the model.
        _, probe_s, probe_cpu = timed(lambda: evaluate_shards(loader, sets["144"], ["1"], batch_size=BATCH["1"], concurrency=args.concurrency), tree=True)
        for crops in ("1", "10", "144"):
            uri = sets[crops]
            n = sum(1 for shard in Path(uri).glob("*.tar") for _ in read_tar(str(shard)))
            plain, plain_s, plain_cpu = timed(lambda: plain_loop(loader, uri, crops, batch_size=BATCH[crops]), tree=False)
            load_plain = load()
            ours, ray_s, ray_cpu = timed(lambda: evaluate_shards(loader, uri, [crops], batch_size=BATCH[crops], concurrency=args.concurrency), tree=True)
            total = n * CROPS[crops]
            rows.append((crops, n, total, plain_s, plain_cpu, load_plain, ray_s, ray_cpu, load(), plain, ours))
            print(f"  {crops}-crop: plain {total / plain_s:.1f} crops/s, Ray {total / ray_s:.1f} crops/s (load {load()})", file=sys.stderr)
    finally:
        ray.shutdown()

    print(f"\n{'protocol':>9}{'images':>8}{'crops':>7}{'plain crops/s':>15}{'Ray crops/s':>13}{'ratio':>7}{'plain /CPU-s':>14}{'Ray /CPU-s':>12}{'ratio':>7}  load (plain, Ray)")
    for crops, n, total, plain_s, plain_cpu, load_plain, ray_s, ray_cpu, load_ray, plain, ours in rows:
        per_cpu = (total / plain_cpu, total / ray_cpu) if plain_cpu and ray_cpu else (float("nan"), float("nan"))
        print(
            f"{crops:>9}{n:>8}{total:>7}{total / plain_s:>15.1f}{total / ray_s:>13.1f}{plain_s / ray_s:>6.2f}x"
            f"{per_cpu[0]:>14.1f}{per_cpu[1]:>12.1f}{per_cpu[1] / per_cpu[0]:>6.2f}x  {load_plain}, {load_ray}"
        )
        if plain != ours:
            print(f"{'':9}results differ: plain {plain}, Ray {ours} (ties between near-uniform random-weight probabilities)")
    print(f"start-up probe: evaluate_shards, protocol 1 on the {args.images_144} images of the 144 set: {probe_s:.1f} s, {probe_cpu or float('nan'):.1f} CPU s")
    print(f"ratio = Ray crops/s / plain crops/s; load average now {load()} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
