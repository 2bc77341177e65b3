"""`incept verify-shards`: every shard against the manifest (sha256, size, sample count), and the samples file."""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field

from pipelines import manifest, storage
from pipelines.errors import UserError


@dataclass
class Verification:
    uri: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)  # one line per bad or missing shard

    @property
    def ok(self) -> bool:
        return not self.problems


def _hash_and_count(location: storage.Location, name: str) -> tuple[str, int, int]:
    """(sha256, bytes, samples) of one tar; samples are the distinct keys of its members."""
    sha = hashlib.sha256()

    class Tee:
        def __init__(self, raw):
            self.raw = raw
            self.n = 0

        def read(self, size=-1):
            data = self.raw.read(size)
            sha.update(data)
            self.n += len(data)
            return data

    with location.fs.open_input_stream(location.join(name)) as raw:
        tee = Tee(raw)
        keys = set()
        with tarfile.open(fileobj=tee, mode="r|") as tar:
            for member in tar:
                keys.add(member.name.split("/")[-1].split(".", 1)[0])
        while tee.read(1 << 20):  # the end-of-archive padding counts towards the hash too
            pass
    return sha.hexdigest(), tee.n, len(keys)


def verify(uri: str) -> Verification:
    data = manifest.read(uri)
    location = storage.locate(uri)
    result = Verification(uri=uri)
    for shard in data["shards"]:
        name = shard["name"]
        result.checked += 1
        if not storage.exists(location, name):
            result.problems.append(f"{name}: missing")
            continue
        try:
            sha, size, samples = _hash_and_count(location, name)
        except (tarfile.TarError, OSError) as err:
            result.problems.append(f"{name}: unreadable tar ({err})")
            continue
        if sha != shard["sha256"]:
            result.problems.append(f"{name}: sha256 {sha[:12]}… differs from the manifest's {shard['sha256'][:12]}…")
        if size != shard["bytes"]:
            result.problems.append(f"{name}: {size} bytes, the manifest says {shard['bytes']}")
        if samples != shard["num_samples"]:
            result.problems.append(f"{name}: {samples} samples, the manifest says {shard['num_samples']}")
    if "samples" in data:  # the per-sample records an append compares against
        try:
            manifest.read_samples(location, data)
        except UserError as err:
            result.problems.append(str(err))
    expected = manifest.fingerprint(data["classes"], [s["sha256"] for s in data["shards"]])
    if expected != data["fingerprint"]:
        result.problems.append("manifest.json: fingerprint does not match its classes and shard hashes")
    return result
