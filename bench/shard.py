"""Sharding throughput: `incept shard` (Ray Data) against a plain single-process loop.

Both read the same generated ImageNet-sized JPEGs (about 70 KB each), decode every image fully
to validate it, and write WebDataset tars. The baseline is what one would write without Ray: a
loop over the files with `webdataset.ShardWriter`. Ray's start-up is timed separately and left
out of the ratio (a cluster is started once, not per job).

    python bench/shard.py [--images 10000] [--shard-size 1000] [--data work/bench/shard-src]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def baseline(src: str, out: str, shard_size: int) -> int:
    import webdataset as wds
    from PIL import Image

    from pipelines.imagenet import list_split

    listing = list_split(src, "train")
    os.makedirs(out, exist_ok=True)
    n = 0
    with wds.ShardWriter(os.path.join(out, "base-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for s in listing.samples:
            data = Path(src, s.source).read_bytes()
            Image.open(io.BytesIO(data)).load()
            sink.write({"__key__": Path(s.source).stem, "jpg": data, "cls": s.label})
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--data", default="work/bench/shard-src", help="generated once, reused by later runs")
    parser.add_argument("--num-cpus", type=int, default=None)
    args = parser.parse_args()

    from pipelines.sample_data import make_sample_set

    marker = Path(args.data, f".complete-{args.images}")
    if not marker.exists():
        shutil.rmtree(args.data, ignore_errors=True)
        t = time.perf_counter()
        make_sample_set(args.data, classes=10, train_per_class=args.images // 10, val_per_class=0, source="digits")
        marker.touch()
        print(f"generated {args.images} images in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    total = sum(p.stat().st_size for p in Path(args.data, "train").rglob("*.JPEG"))
    print(f"data: {args.images} JPEGs, {total / args.images / 1e3:.0f} KB on average, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        n = baseline(args.data, f"{tmp}/base", args.shard_size)
        base_s = time.perf_counter() - t

        import ray

        from pipelines.shard import ShardOptions, plan_job, run_job

        t = time.perf_counter()
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        startup_s = time.perf_counter() - t
        t = time.perf_counter()
        job = plan_job(args.data, "train", f"{tmp}/ray", ShardOptions(shard_size=args.shard_size))
        result = run_job(job, concurrency=args.num_cpus)
        ray_s = time.perf_counter() - t
        ray.shutdown()

    assert result.num_images == n, (result.num_images, n)
    print(f"{'':28}{'images/s':>10}{'seconds':>10}")
    print(f"{'baseline (1 process, wds)':28}{n / base_s:>10.0f}{base_s:>10.1f}")
    print(f"{'incept shard (Ray Data)':28}{n / ray_s:>10.0f}{ray_s:>10.1f}")
    print(f"{'Ray start-up (excluded)':28}{'':>10}{startup_s:>10.1f}")
    print(f"ratio incept/baseline: {base_s / ray_s:.2f}x")


if __name__ == "__main__":
    main()
