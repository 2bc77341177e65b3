"""Which sample goes into which shard: a pure function of the file list, the seed and the size.

The sorted file list is shuffled with a seeded generator and cut into consecutive runs of
`shard_size`, so every shard mixes classes (a training stream that reads a few shards at a time
still sees every class) and the assignment is the same on any machine and any number of CPUs.
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


@dataclass(frozen=True)
class ShardPlan:
    index: int
    name: str
    entries: tuple[Entry, ...]

    def digest(self, options: dict) -> str:
        """Identifies what this shard will hold: its entries and every option that shapes the bytes."""
        payload = {"name": self.name, "options": options, "entries": [asdict(e) for e in self.entries]}
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


def shuffled_order(n: int, seed: int) -> np.ndarray:
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
    order = shuffled_order(len(ordered), seed)
    entries = [Entry(keys[i], ordered[i].source, ordered[i].wnid, ordered[i].label) for i in order]
    return [
        ShardPlan(index=j, name=shard_name(prefix, split, j), entries=tuple(entries[start : start + shard_size]))
        for j, start in enumerate(range(0, len(entries), shard_size))
    ]
