"""A WebDataset tar writer whose bytes depend only on the samples.

tarfile stamps each member with the time, the user and the mode of the moment; we fix all of
them, so the same samples give byte-identical shards on any machine (and a shard's sha256 is
a property of its content, which the manifest's fingerprint relies on).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import BinaryIO


class HashingWriter:
    """Wraps a binary stream; counts and hashes what passes through (tarfile needs tell())."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self.raw.write(data)
        self.sha256.update(data)
        self.bytes += len(data)
        return len(data)

    def tell(self) -> int:
        return self.bytes


class ShardWriter:
    """Writes samples as `KEY.ext` members in a fixed order: extensions sorted within each key."""

    def __init__(self, stream: BinaryIO):
        self.out = HashingWriter(stream)
        self.tar = tarfile.open(fileobj=self.out, mode="w", format=tarfile.USTAR_FORMAT)
        self.num_samples = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))
        self.num_samples += 1

    def close(self) -> tuple[int, str]:
        """Finish the archive; returns (bytes written, sha256 hex)."""
        self.tar.close()
        return self.out.bytes, self.out.sha256.hexdigest()
