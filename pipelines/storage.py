"""Where shards live: a local path or any URI pyarrow has a filesystem for (s3://, gs://, ...).

Writes are atomic. Locally a file is written under a temporary name beside its destination and
renamed into place, so a reader never sees half a file and a stale temporary never looks like the
real thing. Object stores make an object visible only once its upload completes, which gives the
same guarantee without a rename (their "rename" is a copy).
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipelines.errors import UserError

TEMP_MARK = ".incept-tmp-"


@dataclass(frozen=True)
class Location:
    fs: pafs.FileSystem
    path: str  # filesystem-relative path of the folder

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"


def locate(uri: str) -> Location:
    """The filesystem and path for a folder URI; plain paths are local."""
    if "://" not in uri:
        return Location(pafs.LocalFileSystem(), os.path.abspath(uri))
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises several types for bad or unsupported URIs
        raise UserError(f"cannot open {uri}: {err}") from None
    return Location(fs, path)


def uri_of(location: Location, name: str = "") -> str:
    """A URI (or local path) for a file in the folder, for readers such as Ray Data."""
    path = location.join(name) if name else location.path
    if location.is_local:
        return path
    return f"{location.fs.type_name}://{path}"


def exists(location: Location, name: str) -> bool:
    return location.fs.get_file_info(location.join(name)).type == pafs.FileType.File


def size(location: Location, name: str) -> int | None:
    info = location.fs.get_file_info(location.join(name))
    return info.size if info.type == pafs.FileType.File else None


def list_names(location: Location) -> list[str]:
    """Names of the files directly in the folder (empty when it does not exist)."""
    selector = pafs.FileSelector(location.path, allow_not_found=True)
    return sorted(i.base_name for i in location.fs.get_file_info(selector) if i.type == pafs.FileType.File)


def make_dirs(location: Location, sub: str = "") -> None:
    location.fs.create_dir(location.join(sub) if sub else location.path, recursive=True)


def read_bytes(location: Location, name: str) -> bytes:
    with location.fs.open_input_stream(location.join(name)) as f:
        return f.read()


@contextmanager
def atomic_output(location: Location, name: str):
    """A writable binary stream whose content appears under `name` only when the block ends cleanly."""
    final = location.join(name)
    if not location.is_local:
        with location.fs.open_output_stream(final) as f:
            yield f
        return
    folder, base = os.path.split(final)
    temp = os.path.join(folder, f"{TEMP_MARK}{uuid.uuid4().hex}-{base}")
    try:
        with open(temp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def write_bytes(location: Location, name: str, data: bytes) -> None:
    with atomic_output(location, name) as f:
        f.write(data)


def remove_stale_temporaries(location: Location, sub: str = "") -> int:
    """Delete temporaries left by killed writers in the folder (or its subfolder); returns how many."""
    folder = Location(location.fs, location.join(sub)) if sub else location
    stale = [n for n in list_names(folder) if n.startswith(TEMP_MARK)]
    for n in stale:
        folder.fs.delete_file(folder.join(n))
    return len(stale)
