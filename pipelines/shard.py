"""`incept shard`: an ImageNet split into WebDataset shards, as a Ray Data job.

The driver plans (pure: `shard_plan.plan_shards`), checks which shards a previous run already
finished, and hands one row per missing shard to Ray Data; each task reads its own source files,
validates and converts them (`jpeg.prepare`) and writes its own tar. Moving JPEG bytes through the
object store instead was slower than a plain single-process loop on 2 cores (issue 2's
measurements); one task per shard keeps every byte in the process that reads it.

Resumability: a task writes `_progress/<shard>.json` (the shard's sha256, size, sample count,
skipped files and the digest of its plan) before it renames the finished tar into place. A rerun
keeps a shard whose record matches its plan and whose bytes still hash to the record; every other
shard is rewritten. Since shards are deterministic, a rewrite gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field

from pipelines import imagenet, manifest, storage
from pipelines.jpeg import DEFAULT_QUALITY, BadImage, prepare
from pipelines.shard_plan import Entry, ShardPlan, plan_shards
from pipelines.tar_writer import ShardWriter

log = logging.getLogger(__name__)

PROGRESS = "_progress"


@dataclass(frozen=True)
class ShardOptions:
    shard_size: int = 1000  # samples per shard (WebDataset's ImageNet convention)
    max_side: int | None = None  # downscale images whose longer side exceeds this (pixels)
    quality: int = DEFAULT_QUALITY  # JPEG quality for converted images
    seed: int = 0  # the shuffle that assigns samples to shards
    prefix: str = "imagenet"


@dataclass
class ShardResult:
    out: str
    split: str
    num_images: int
    num_shards: int
    num_skipped: int
    fingerprint: str
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"sharded {self.num_images} images into {self.num_shards} shards ({self.num_skipped} skipped)"


def _bytes_options(options: ShardOptions, split: str) -> dict:
    """The options that shape a shard's bytes (the seed and size shape its entries instead)."""
    return {"max_side": options.max_side, "quality": options.quality, "split": split, "format": manifest.FORMAT_VERSION}


def _kept_record(location: storage.Location, plan: ShardPlan, digest: str) -> dict | None:
    """The record of a shard a previous run finished, if its bytes still match; else None."""
    try:
        record = json.loads(storage.read_bytes(location, f"{PROGRESS}/{plan.name}.json"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("digest") != digest or storage.size(location, plan.name) != record.get("bytes"):
        return None
    sha = hashlib.sha256()
    with location.fs.open_input_stream(location.join(plan.name)) as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    return record if sha.hexdigest() == record["sha256"] else None


def write_shard(row: dict, *, src: str, out: str, options: dict) -> dict:
    """One Ray task: read, validate and write the samples of one shard. Returns its record."""
    plan_json = json.loads(row["plan"])
    entries = [Entry(**e) for e in plan_json["entries"]]
    name, digest = plan_json["name"], plan_json["digest"]
    location = storage.locate(out)
    skipped = []
    with storage.atomic_output(location, name) as stream:
        writer = ShardWriter(stream)
        for entry in entries:
            try:
                with open(os.path.join(src, entry.source), "rb") as f:
                    data = f.read()
                image = prepare(data, max_side=options["max_side"], quality=options["quality"])
            except BadImage as err:
                skipped.append({"source": entry.source, "reason": str(err)})
                continue
            except OSError as err:
                skipped.append({"source": entry.source, "reason": f"unreadable: {err.strerror or err}"})
                continue
            meta = {"wnid": entry.wnid, "source": entry.source, "width": image.width, "height": image.height}
            writer.add(
                entry.key,
                {"jpg": image.jpeg, "cls": str(entry.label).encode(), "json": json.dumps(meta, sort_keys=True).encode()},
            )
        num_bytes, sha256 = writer.close()
        record = {
            "name": name,
            "num_samples": writer.num_samples,
            "bytes": num_bytes,
            "sha256": sha256,
            "skipped": skipped,
            "digest": digest,
        }
        # The record goes first: a shard under its final name always has one.
        storage.write_bytes(location, f"{PROGRESS}/{name}.json", json.dumps(record).encode())
    return {"record": json.dumps(record)}


@dataclass
class ShardJob:
    """What a run will do: its plans, and which shards an earlier run already finished."""

    src: str
    split: str
    out: str
    listing: imagenet.Listing
    words: dict[str, str]
    bytes_options: dict
    plans: list[ShardPlan]
    kept: dict[str, dict]  # shard name -> record of a verified shard from an earlier run
    todo: list[tuple[ShardPlan, str]]  # (plan, digest) of the shards to write


def plan_job(src: str, split: str, out: str, options: ShardOptions) -> ShardJob:
    """Read the source, plan the shards and check the output for finished ones. No Ray needed."""
    location = storage.locate(out)  # a URI with credentials in it is refused before anything else
    listing = imagenet.list_split(src, split)
    plans = plan_shards(listing.samples, shard_size=options.shard_size, seed=options.seed, prefix=options.prefix, split=split)
    storage.check(location)
    storage.make_dirs(location)
    storage.make_dirs(location, PROGRESS)
    stale = storage.remove_stale_temporaries(location) + storage.remove_stale_temporaries(location, PROGRESS)
    if stale:
        log.info("removed %d temporary files left by an interrupted run", stale)
    bytes_options = _bytes_options(options, split)
    kept, todo = {}, []
    for plan in plans:
        digest = plan.digest(bytes_options)
        if (record := _kept_record(location, plan, digest)) is not None:
            kept[plan.name] = record
        else:
            todo.append((plan, digest))
    if kept:
        log.info("%d of %d shards are complete from an earlier run; writing %d", len(kept), len(plans), len(todo))
    # The canonical URI: the driver's S3 endpoint travels in it to write tasks on other nodes.
    return ShardJob(os.path.abspath(src), split, location.uri, listing, imagenet.class_words(src), bytes_options, plans, kept, todo)


def run_job(job: ShardJob, *, concurrency: int | None = None) -> ShardResult:
    """Write the missing shards with Ray Data, then the manifest. Ray must be initialised."""
    import ray.data  # here, not at import: planning and the CLI's --help need no Ray

    records = dict(job.kept)
    # Ray Data splits the CPUs between operators by default (op_resource_reservation_ratio 0.5),
    # which here leaves the one real operator a single task on 2 CPUs: measured 0.94x the
    # single-process baseline with it, see docs/benchmarks.md.
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    if job.todo:
        rows = [
            {"plan": json.dumps({"name": p.name, "digest": d, "entries": [asdict(e) for e in p.entries]})}
            for p, d in job.todo
        ]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
            write_shard,
            fn_kwargs={"src": job.src, "out": job.out, "options": job.bytes_options},
            num_cpus=1,
            concurrency=concurrency,
        )
        for row in ds.iter_rows():
            record = json.loads(row["record"])
            records[record["name"]] = record

    skipped = [s for r in records.values() for s in r["skipped"]]
    skipped += [{"source": s, "reason": "no label in LOC_val_solution.csv"} for s in job.listing.unlabelled]
    result = manifest.build(split=job.split, classes=job.listing.classes, words=job.words, shards=list(records.values()), skipped=skipped)
    manifest.write(storage.locate(job.out), result)
    return ShardResult(
        out=job.out,
        split=job.split,
        num_images=result["num_samples"],
        num_shards=len(job.plans),
        num_skipped=len(skipped),
        fingerprint=result["fingerprint"],
        written=[p.name for p, _ in job.todo],
        kept=sorted(job.kept),
    )
