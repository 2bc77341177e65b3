"""`incept shard`: an ImageNet split into WebDataset shards, as a Ray Data job.

The driver plans (pure: `shard_plan.plan_shards`), checks which shards a previous run already
finished, and hands one row per missing shard to Ray Data; each task reads its own source files,
validates and converts them (`jpeg.prepare`) and writes its own tar. Moving JPEG bytes through the
object store instead was slower than a plain single-process loop on 2 cores (issue 2's
measurements); one task per shard keeps every byte in the process that reads it.

Resumability: a task writes `_progress/<shard>.json` (the shard's sha256, size, sample count,
skipped files, each sample's source size and sha256, and the digest of its plan) before it renames
the finished tar into place. A rerun keeps a shard whose record matches its plan and whose bytes
still hash to the record; every other shard is rewritten. Since shards are deterministic, a
rewrite gives the same bytes.

A growing source (`append`): the images an earlier run has not seen go to new shards numbered after
the existing ones, and no existing shard is touched. What the earlier run sharded must be exactly
what the source still holds (same classes, same options, every sharded image present with the
size and sha256 that `samples.jsonl.gz` recorded); anything else needs a full reshard, which an
append refuses to do quietly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from pipelines import archives, imagenet, manifest, storage
from pipelines.errors import UserError
from pipelines.jpeg import DEFAULT_QUALITY, BadImage, prepare
from pipelines.shard_plan import Entry, ShardPlan, plan_append, plan_shards
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
    exclude: str | None = None  # a file listing images to leave out (the ILSVRC2014 validation blacklist's form)
    append: bool = False  # shard only images an earlier run did not, into new shards


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
    bytes_written: int = 0  # shard bytes this run wrote (the manifest and samples file aside)
    appended: int | None = None  # an append: images new since the earlier run ...
    new_shards: int = 0  # ... in this many new shards

    def summary(self) -> str:
        if self.appended is not None:
            return (f"appended {self.appended} new images in {self.new_shards} new shards: "
                    f"{self.num_images} images in {self.num_shards} shards ({self.num_skipped} skipped)")
        return f"sharded {self.num_images} images into {self.num_shards} shards ({self.num_skipped} skipped)"


def _bytes_options(options: ShardOptions, split: str) -> dict:
    """The options that shape a shard's bytes (the seed and size shape its entries instead)."""
    return {"max_side": options.max_side, "quality": options.quality, "split": split, "format": manifest.FORMAT_VERSION}


def _recorded_options(options: ShardOptions, exclude_sha256: str | None) -> dict:
    """The options the manifest records: an append must use the same ones."""
    return {
        "shard_size": options.shard_size,
        "max_side": options.max_side,
        "quality": options.quality,
        "seed": options.seed,
        "prefix": options.prefix,
        "exclude_sha256": exclude_sha256,
    }


def read_source(src: str, item, open_archive=None) -> bytes:
    """The bytes of a Sample or Entry: from its archive by byte range, or from its file.

    `open_archive(name)`: an open file of the archive, so a task reading a shard's thousand
    members opens the archive once rather than a thousand times (each open is a round trip on NFS).
    """
    if item.member:
        name, offset, size = item.member
        path, member = os.path.join(src, name), archives.Member(item.source, offset, size)
        return archives.read_at(open_archive(name), path, member) if open_archive else archives.read_member(path, member)
    with open(os.path.join(src, item.source), "rb") as f:
        return f.read()


def _kept_record(location: storage.Location, plan: ShardPlan, digest: str) -> dict | None:
    """The record of a shard a previous run finished, if its bytes still match; else None."""
    try:
        record = json.loads(storage.read_bytes(location, f"{PROGRESS}/{plan.name}.json"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if record.get("digest") != digest or "samples" not in record or storage.size(location, plan.name) != record.get("bytes"):
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
    skipped, samples = [], []
    with contextlib.ExitStack() as files, storage.atomic_output(location, name) as stream:
        open_archive = functools.cache(lambda archive: files.enter_context(open(os.path.join(src, archive), "rb")))
        writer = ShardWriter(stream)
        for entry in entries:
            try:
                data = read_source(src, entry, open_archive)
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
            # The source's size and hash, so a later append can tell an image that changed.
            samples.append({"key": entry.key, "source": entry.source, "shard": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        num_bytes, sha256 = writer.close()
        record = {
            "name": name,
            "num_samples": writer.num_samples,
            "bytes": num_bytes,
            "sha256": sha256,
            "skipped": skipped,
            "samples": samples,
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
    options: dict  # what the manifest records (ShardOptions and the exclusion list's sha256)
    plans: list[ShardPlan]
    kept: dict[str, dict]  # shard name -> record of a verified shard from an earlier run
    todo: list[tuple[ShardPlan, str]]  # (plan, digest) of the shards to write
    skipped: list[dict]  # known before any image is read: excluded, unlabelled
    base: dict | None = None  # an append: the earlier manifest and its samples, which stay as they are


def plan_job(src: str, split: str, out: str, options: ShardOptions) -> ShardJob:
    """Read the source, plan the shards and check the output for finished ones. No Ray needed.

    With `options.append` and an earlier run's manifest in `out`, only the images that run did not
    shard are planned, into new shards; without a manifest an append is a full run.
    """
    location = storage.locate(out)  # a URI with credentials in it is refused before anything else
    listing = imagenet.list_split(src, split)
    excluded, exclude_sha256 = imagenet.read_exclusions(options.exclude, listing) if options.exclude else (set(), None)
    samples = [s for s in listing.samples if s.source not in excluded]
    skipped = [{"source": s, "reason": "excluded"} for s in sorted(excluded)]
    skipped += [{"source": s, "reason": f"no label in {listing.labelled_by}"} for s in listing.unlabelled if s not in excluded]
    recorded = _recorded_options(options, exclude_sha256)
    storage.check(location)
    base = _earlier_run(location, split, listing, samples, recorded, src) if options.append else None
    storage.make_dirs(location)
    storage.make_dirs(location, PROGRESS)
    stale = storage.remove_stale_temporaries(location) + storage.remove_stale_temporaries(location, PROGRESS)
    if stale:
        log.info("removed %d temporary files left by an interrupted run", stale)
    size_seed = {"shard_size": options.shard_size, "seed": options.seed, "prefix": options.prefix, "split": split}
    if base is None:
        plans = plan_shards(samples, **size_seed)
    else:
        known = {r["source"] for r in base["samples"]} | {s["source"] for s in base["manifest"]["skipped"]}
        fresh = [s for s in samples if s.source not in known]
        skipped = [s for s in skipped if s["source"] not in known]
        taken = {r["key"] for r in base["samples"]}
        plans = plan_append(fresh, taken_keys=taken, first_index=len(base["manifest"]["shards"]), **size_seed)
        log.info("appending %d new images to %d existing shards in %d new shards", len(fresh), len(base["manifest"]["shards"]), len(plans))
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
    return ShardJob(os.path.abspath(src), split, location.uri, listing, imagenet.class_words(src), bytes_options, recorded,
                    plans, kept, todo, skipped, base)


REFUSED = "a full reshard is needed (incept shard without --append, incept retrain --reshard), which writes every shard again"


def _first(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _earlier_run(location: storage.Location, split: str, listing: imagenet.Listing, samples: list, options: dict, src: str) -> dict | None:
    """The earlier run's manifest and samples, checked to be a prefix of what the source holds now.

    Refused (UserError) where appending would make old shards wrong: other options, other classes
    (labels are positions in the class list), an already-sharded image that changed or vanished.
    """
    if not storage.exists(location, manifest.MANIFEST):
        return None
    earlier = manifest.read(location.uri)
    where = location.uri
    if "options" not in earlier or "samples" not in earlier:
        raise UserError(f"cannot append to {where}: its manifest predates per-sample records; {REFUSED}")
    if earlier["split"] != split:
        raise UserError(f"cannot append to {where}: it holds the {earlier['split']} split; {REFUSED}")
    changed = [f"{k} {options[k]!r} (was {earlier['options'].get(k)!r})" for k in options if earlier["options"].get(k) != options[k]]
    if changed:
        raise UserError(f"cannot append to {where} with other options than its earlier run: {_first(changed)}; {REFUSED}")
    if listing.classes != earlier["classes"]:
        new = sorted(set(listing.classes) - set(earlier["classes"]))
        gone = sorted(set(earlier["classes"]) - set(listing.classes))
        what = (f"new classes {_first(new)}" if new else "") + ("; " if new and gone else "") + (f"classes gone: {_first(gone)}" if gone else "")
        raise UserError(f"cannot append to {where}: {what} (labels are positions in the class list, so old shards would be relabelled); {REFUSED}")
    recorded = manifest.read_samples(location, earlier)
    offenders = _changed_sources(src, {s.source: s for s in samples}, recorded)
    if offenders:
        raise UserError(f"cannot append to {where}: {len(offenders)} already-sharded images changed or vanished ({_first(offenders)}); {REFUSED}")
    return {"manifest": earlier, "samples": recorded}


def _changed_sources(src: str, now: dict, recorded: list[dict]) -> list[str]:
    """Sources an earlier run sharded that are gone or differ now: sizes first, then every byte.

    Hashing reads each sharded image once (ImageNet: about 140 GB), in threads: hashlib and file
    reads release the GIL.
    """
    offenders = []
    present = []
    for r in recorded:
        sample = now.get(r["source"])
        if sample is None:
            offenders.append(f"{r['source']} vanished")
        elif (sample.member[2] if sample.member else _file_size(src, r["source"])) != r["bytes"]:
            offenders.append(f"{r['source']} changed")
        else:
            present.append((sample, r))
    if offenders:
        return offenders

    def differs(pair) -> str | None:
        sample, r = pair
        return None if hashlib.sha256(read_source(src, sample)).hexdigest() == r["sha256"] else f"{r['source']} changed"

    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        return [o for o in pool.map(differs, present, chunksize=64) if o]


def _file_size(src: str, source: str) -> int:
    try:
        return os.stat(os.path.join(src, source)).st_size
    except OSError:
        return -1


def run_job(job: ShardJob, *, concurrency: int | None = None) -> ShardResult:
    """Write the missing shards with Ray Data, then the manifest. Ray must be initialised."""
    records = dict(job.kept)
    if job.todo:
        import ray.data  # here, not at import: planning and the CLI's --help need no Ray

        # Ray Data splits the CPUs between operators by default (op_resource_reservation_ratio 0.5),
        # which here leaves the one real operator a single task on 2 CPUs: measured 0.94x the
        # single-process baseline with it, see docs/benchmarks.md.
        ray.data.DataContext.get_current().op_resource_reservation_enabled = False
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

    new = [records[p.name] for p in job.plans]
    shards = new + (job.base["manifest"]["shards"] if job.base else [])
    samples = (job.base["samples"] if job.base else []) + [s for r in new for s in r["samples"]]
    skipped = (job.base["manifest"]["skipped"] if job.base else []) + job.skipped + [s for r in new for s in r["skipped"]]
    location = storage.locate(job.out)
    result = manifest.build(split=job.split, classes=job.listing.classes, words=job.words, shards=shards, skipped=skipped,
                            options=job.options, samples=manifest.write_samples(location, samples))
    manifest.write(location, result)
    return ShardResult(
        out=job.out,
        split=job.split,
        num_images=result["num_samples"],
        num_shards=len(result["shards"]),
        num_skipped=len(skipped),
        fingerprint=result["fingerprint"],
        written=[p.name for p, _ in job.todo],
        kept=sorted(job.kept),
        bytes_written=sum(records[p.name]["bytes"] for p, _ in job.todo),
        appended=sum(r["num_samples"] for r in new) if job.base else None,
        new_shards=len(job.plans) if job.base else 0,
    )
