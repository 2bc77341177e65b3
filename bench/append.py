"""A growing source: bytes an append writes against a full reshard, in the same process.

A source of N images is sharded; then 1% more images arrive (new files in existing classes) and
the set is brought up to date twice: `--append` (new shards for the new images, every old shard
kept) and a full reshard into a fresh folder (the baseline: what `incept retrain` did before, one
global permutation, so nearly every shard changes). Both write through `plan_job` + `run_job` on a
local Ray.

    python bench/append.py [--images 5000] [--new 0.01] [--shard-size 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--new", type=float, default=0.01, help="fraction of new images")
    parser.add_argument("--shard-size", type=int, default=100)
    args = parser.parse_args()

    import ray

    from pipelines.sample_data import make_sample_set
    from pipelines.shard import ShardOptions, plan_job, run_job

    with tempfile.TemporaryDirectory() as tmp:
        src, grown = Path(tmp, "src"), Path(tmp, "grown")
        per_class = args.images // 10
        make_sample_set(src, classes=10, train_per_class=per_class, val_per_class=0, source="synthetic")
        extra = max(1, round(args.images * args.new))
        make_sample_set(grown, classes=10, train_per_class=-(-extra // 10), val_per_class=0, source="synthetic", seed=1)
        new_files = sorted(grown.glob("train/*/*.JPEG"))[:extra]
        print(f"data: {args.images} images + {len(new_files)} new ({len(new_files) / args.images:.1%}), shards of {args.shard_size}, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")

        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        options = ShardOptions(shard_size=args.shard_size)
        first = run_job(plan_job(str(src), "train", f"{tmp}/appended", options))
        shutil.copytree(f"{tmp}/appended", f"{tmp}/resharded")  # the same earlier run, for the baseline
        for f in new_files:
            shutil.copy(f, src / "train" / f.parent.name / f"new_{f.name}")

        t = time.perf_counter()
        appended = run_job(plan_job(str(src), "train", f"{tmp}/appended", ShardOptions(shard_size=args.shard_size, append=True)))
        append_s = time.perf_counter() - t
        t = time.perf_counter()
        resharded = run_job(plan_job(str(src), "train", f"{tmp}/resharded", options))
        reshard_s = time.perf_counter() - t
        ray.shutdown()
        total = sum(s["bytes"] for s in json.loads(Path(tmp, "appended", "manifest.json").read_text())["shards"])

    for name, result, seconds in (("full reshard (baseline)", resharded, reshard_s), ("append", appended, append_s)):
        print(f"{name:>24}: wrote {len(result.written):4d} of {result.num_shards} shards, {result.bytes_written / 1e6:8.1f} MB, {seconds:6.1f} s")
    print(f"first run: {first.num_shards} shards; the grown set: {total / 1e6:.1f} MB in {appended.num_shards} shards")
    print(f"append writes {appended.bytes_written / total:.1%} of the set's bytes, the full reshard {resharded.bytes_written / total:.1%}: "
          f"ratio {appended.bytes_written / max(resharded.bytes_written, 1):.3f}x")


if __name__ == "__main__":
    main()
