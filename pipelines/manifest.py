"""manifest.json: what a folder of shards holds (DESIGN.md, Shards).

    format_version  this layout's version
    split           "train" or "val"
    classes         wnids in label order
    words           wnid -> words, where the source had LOC_synset_mapping.txt
    num_samples     samples over all shards
    fingerprint     sha256 over the class list and the shards' sha256s: equal fingerprints, equal data
    shards          [{name, num_samples, bytes, sha256}] in index order
    skipped         [{source, reason}] for files that could not go into a shard or were excluded
    options         the sharding options (shard_size, max_side, quality, seed, prefix, exclude_sha256):
                    an append must use the same
    samples         {name, sha256, count} of samples.jsonl.gz: per sample {key, source, shard, bytes,
                    sha256}, the source image's size and hash, in shard order

The per-sample records are a file of their own, not a list in the manifest: for ImageNet they are
about 190 MB of JSON, which every training worker would otherwise parse to find 1,282 shard names.
"""

from __future__ import annotations

import gzip
import hashlib
import json

from pipelines import storage
from pipelines.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl.gz"


def fingerprint(classes: list[str], shard_sha256s: list[str]) -> str:
    payload = json.dumps({"classes": classes, "shards": shard_sha256s}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def build(*, split: str, classes: list[str], words: dict[str, str], shards: list[dict], skipped: list[dict],
          options: dict | None = None, samples: dict | None = None) -> dict:
    shards = sorted(shards, key=lambda s: s["name"])
    built = {
        "format_version": FORMAT_VERSION,
        "split": split,
        "classes": list(classes),
        "words": {w: words[w] for w in classes if w in words},
        "num_samples": sum(s["num_samples"] for s in shards),
        "fingerprint": fingerprint(list(classes), [s["sha256"] for s in shards]),
        "shards": [{k: s[k] for k in ("name", "num_samples", "bytes", "sha256")} for s in shards],
        "skipped": sorted(skipped, key=lambda s: s["source"]),
    }
    if options is not None:
        built["options"] = dict(options)
    if samples is not None:
        built["samples"] = dict(samples)
    return built


def write_samples(location: storage.Location, samples: list[dict]) -> dict:
    """Write the per-sample records; returns the manifest's `samples` entry. Same records, same bytes."""
    lines = "".join(json.dumps(s, sort_keys=True, separators=(",", ":")) + "\n" for s in samples)
    data = gzip.compress(lines.encode(), mtime=0)  # mtime 0: the bytes depend on the records alone
    storage.write_bytes(location, SAMPLES, data)
    return {"name": SAMPLES, "sha256": hashlib.sha256(data).hexdigest(), "count": len(samples)}


def read_samples(location: storage.Location, manifest: dict) -> list[dict]:
    """The per-sample records the manifest names, checked against its sha256."""
    entry = manifest["samples"]
    where = storage.uri_of(location, entry["name"])
    try:
        data = storage.read_bytes(location, entry["name"])
    except FileNotFoundError:
        raise UserError(f"{where} is missing: reshard the split") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise UserError(f"{where} does not match its manifest's sha256: reshard the split")
    return [json.loads(line) for line in gzip.decompress(data).splitlines() if line]


def write(location: storage.Location, manifest: dict) -> None:
    storage.write_bytes(location, MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def read(uri: str) -> dict:
    """The manifest of the shard folder at `uri`; UserError when there is none."""
    location = storage.locate(uri)
    try:
        manifest = json.loads(storage.read_bytes(location, MANIFEST))
    except FileNotFoundError:
        storage.check(location)  # a missing bucket says so, rather than "shard first"
        raise UserError(f"no {MANIFEST} in {uri}: shard the data first (incept shard --out {uri})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{storage.uri_of(location, MANIFEST)} is not valid JSON ({err}): reshard the split") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{storage.uri_of(location, MANIFEST)} has format_version {manifest.get('format_version')!r}, "
            f"this incept reads {FORMAT_VERSION}: reshard the split"
        )
    return manifest


def shard_uris(uri: str, manifest: dict) -> list[str]:
    """URIs of the non-empty shards, each with the folder's options (endpoint): openable on any node."""
    location = storage.locate(uri)
    return [storage.uri_of(location, s["name"]) for s in manifest["shards"] if s["num_samples"] > 0]


def shard_paths(location: storage.Location, manifest: dict) -> list[str]:
    """Filesystem paths of the non-empty shards, for readers handed `location.fs` itself."""
    return [location.join(s["name"]) for s in manifest["shards"] if s["num_samples"] > 0]
