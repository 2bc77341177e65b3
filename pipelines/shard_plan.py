"""Which sample goes into which shard: a pure function of the file list, the seed and the size.

The sorted file list is shuffled with a seeded generator and cut into consecutive runs of
`shard_size`, so every shard mixes classes (a training stream that reads a few shards at a time
still sees every class) and the assignment is the same on any machine and any number of CPUs.

An append (`plan_append`) plans only the images an earlier run has not sharded: shuffled the same
way and cut into new shards numbered after the existing ones, so no existing shard changes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import numpy as np

from pipelines.imagenet import Sample

_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9_\-]")


@dataclass(frozen=True)
class Entry:
    key: str  # unique within the split, no dot (WebDataset cuts keys at the first dot)
    source: str
    wnid: str
    label: int
    member: tuple | None = None  # (archive, offset, size) where the bytes are in an archive; not part of the digest


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    entries: tuple[Entry, ...]

    def digest(self, options: dict) -> str:
        """Identifies what this shard will hold: its entries and every option that shapes the bytes."""
        # Where the bytes are read from is not what the shard holds: the same image from an
        # archive or from the extracted tree gives the same shard.
        entries = [{"key": e.key, "source": e.source, "wnid": e.wnid, "label": e.label} for e in self.entries]
        payload = {"name": self.name, "options": options, "entries": entries}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def shard_name(prefix: str, split: str, index: int) -> str:
    return f"{prefix}-{split}-{index:06d}.tar"


def sample_keys(sources: list[str]) -> list[str]:
    """A key per source path: the file's stem made dot-free, suffixed only where two would clash."""
    keys = [_NOT_IN_KEY.sub("_", PurePosixPath(s).stem) or "sample" for s in sources]
    seen: dict[str, int] = {}
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
    counters: dict[str, int] = {}
    unique = []
    for k in keys:
        if seen[k] > 1:
            counters[k] = counters.get(k, 0) + 1
            k = f"{k}-{counters[k]}"
        unique.append(k)
    return unique


def appended_keys(sources: list[str], taken: set[str]) -> list[str]:
    """Keys for images added to an existing set: as `sample_keys`, but never one of the `taken` keys.

    A new image whose key would clash with an old one's (or another new one's) gets the first free
    suffix `-N`; old keys never change, so a sample keeps its key across appends.
    """
    keys, used = [], set(taken)
    for source in sources:
        base = _NOT_IN_KEY.sub("_", PurePosixPath(source).stem) or "sample"
        key, n = base, 0
        while key in used:
            n += 1
            key = f"{base}-{n}"
        used.add(key)
        keys.append(key)
    return keys


def shuffled_order(n: int, seed) -> np.ndarray:
    """A permutation of range(n), the same for a seed on every platform (PCG64 is portable)."""
    return np.random.default_rng(seed).permutation(n)


def plan_shards(
    samples: list[Sample], *, shard_size: int, seed: int, prefix: str, split: str
) -> list[ShardPlan]:
    """Assign samples to shards: sort by path, shuffle with `seed`, cut into runs of `shard_size`."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    ordered = sorted(samples, key=lambda s: s.source)
    keys = sample_keys([s.source for s in ordered])
    return _cut(ordered, keys, shard_size=shard_size, seed=seed, prefix=prefix, split=split, first_index=0)


def plan_append(
    samples: list[Sample], *, taken_keys: set[str], first_index: int, shard_size: int, seed: int, prefix: str, split: str
) -> list[ShardPlan]:
    """New shards for images an earlier run did not shard, numbered from `first_index`.

    The shuffle's seed mixes in `first_index`, so successive appends of the same seed draw
    different permutations, and rerunning an interrupted append plans the same shards.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    ordered = sorted(samples, key=lambda s: s.source)
    keys = appended_keys([s.source for s in ordered], taken_keys)
    return _cut(ordered, keys, shard_size=shard_size, seed=[seed, first_index], prefix=prefix, split=split, first_index=first_index)


def _cut(ordered: list[Sample], keys: list[str], *, shard_size: int, seed, prefix: str, split: str, first_index: int) -> list[ShardPlan]:
    order = shuffled_order(len(ordered), seed)
    entries = [Entry(keys[i], ordered[i].source, ordered[i].wnid, ordered[i].label, ordered[i].member) for i in order]
    return [
        ShardPlan(index=j, name=shard_name(prefix, split, j), entries=tuple(entries[start : start + shard_size]))
        for j, start in enumerate(range(0, len(entries), shard_size), start=first_index)
    ]
