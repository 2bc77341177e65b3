"""Reading ImageNet as it ships (ILSVRC-2012), without extracting anything to disk.

    ILSVRC2012_img_train.tar       a tar of 1,000 inner tars <wnid>.tar, each of <wnid>_<n>.JPEG
    ILSVRC2012_img_val.tar         50,000 flat files ILSVRC2012_val_00000001.JPEG ... _00050000.JPEG
    ILSVRC2012_devkit_t12.tar.gz   ILSVRC2012_devkit_t12/data/meta.mat (the synsets) and
                                   .../data/ILSVRC2012_validation_ground_truth.txt (one ID per val image)

An archive is indexed once (`index_tar`: one pass over its headers, seeking over the data) and its
members are then read in place by offset (`read_member`). Extracting the train archive would write
another 138 GB; the index pass asks for 513 bytes a member (its header and tarfile's one-byte
end-of-data probe), so its cost is a header parse and, on a cold cache, one small read per member
(docs/benchmarks.md, Archive index).

Every check that can fail on a bad download happens in the index pass, before a shard is written:
a file that is not a tar, a member whose data runs past the end, a header cut short, an archive
without its end-of-archive block, a broken inner tar. The message names the archive, the inner tar
and the last member that was whole.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from pipelines.errors import UserError

TRAIN_ARCHIVE = "ILSVRC2012_img_train.tar"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
DEVKIT_ARCHIVE = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_FOLDER = "ILSVRC2012_devkit_t12"  # the extracted devkit
META_MAT = "data/meta.mat"  # under DEVKIT_FOLDER
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"  # under DEVKIT_FOLDER
SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "num_children")  # the fields of meta.mat's synsets we read

_REDOWNLOAD = "download it again"


@dataclass(frozen=True)
class Member:
    name: str  # path inside the archive; nested: "<inner tar's stem>/<path inside the inner tar>"
    offset: int  # byte offset of the member's data within the outer archive file
    size: int  # bytes


@dataclass(frozen=True)
class Synset:
    ilsvrc_id: int  # ILSVRC2012_ID: 1..1000 for the leaves, which the ground truth uses
    wnid: str
    words: str  # "tench, Tinca tinca"


@dataclass(frozen=True)
class Devkit:
    synsets: list[Synset]  # the leaf synsets (num_children == 0), by ILSVRC2012_ID: synsets[i].ilsvrc_id == i + 1
    val_ground_truth: list[int]  # ILSVRC2012_ID per validation image, in file order (image 1 first)


# --- The index pass -----------------------------------------------------------------------------


class _Window:
    """A read-only file over bytes [start, start + size) of an open file: an inner tar in place.

    Each read seeks the shared file first, so the outer tar and an inner tar can be read in turns.
    Reads past the window's end return b"", as a file's do past its end.
    """

    def __init__(self, raw, start: int, size: int):
        self.raw = raw
        self.start = start
        self.size = size
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        self.raw.seek(self.start + self.pos)
        data = self.raw.read(end - self.pos)
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos


class _NotATar(Exception):
    """No tar header where the tar should start."""


class _Broken(Exception):
    """The tar stops being whole after the members yielded so far; `member` is the one cut short, if known."""

    def __init__(self, reason: str, member: tarfile.TarInfo | None = None):
        super().__init__(reason)
        self.member = member


def _open_archive(path: str):
    # Unbuffered: a buffered file would fill 8 KB after every seek, reading member data the pass skips.
    return open(path, "rb", buffering=0)


def _clean(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _headers(window: _Window) -> Iterator[tarfile.TarInfo]:
    """The regular-file headers of the tar in `window`, in archive order, checked to be whole."""
    try:
        # "r:" (random access), not "r|": iterating seeks over each member's data instead of reading it.
        tar = tarfile.TarFile(fileobj=window, mode="r")
    except tarfile.TarError as e:
        raise _NotATar(str(e)) from None
    while True:
        try:
            info = tar.next()
        except tarfile.TarError as e:
            raise _Broken(str(e)) from None
        if info is None:
            break
        if info.issparse():
            # Its data is stored in pieces: (offset, size) would not read it back.
            raise _Broken(f"member {info.name} is a sparse file, which ImageNet's tars never hold")
        if info.isreg() and info.offset_data + info.size > window.size:
            raise _Broken(f"member {_clean(info.name)} runs past the end", info)
        if info.isreg():
            yield info
    # tarfile ends its iteration silently at a header cut short or garbled after the first one; a
    # whole tar ends with a zero block where the next header would be (GNU tar and tarfile write two).
    window.seek(tar.offset)
    block = window.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        raise _Broken("no end-of-archive block where the next header would be")


def _inner_stem(name: str) -> str:
    base = PurePosixPath(_clean(name)).name
    return base[: -len(".tar")] if base.endswith(".tar") else base


def _truncated(path: str, members: list[Member], where: str, reason: str) -> UserError:
    after = f"after member {members[-1].name}" if members else "before its first member"
    return UserError(f"{path} is truncated or corrupt{where} {after} ({reason}): {_REDOWNLOAD}")


def _index_inner(raw, path: str, outer: tarfile.TarInfo, size: int, members: list[Member], *, cut: bool) -> None:
    """Appends the members of the inner tar `outer` (its first `size` bytes: fewer when the file is `cut`)."""
    inner = _clean(outer.name)
    stem = _inner_stem(outer.name)
    try:
        for info in _headers(_Window(raw, outer.offset_data, size)):
            members.append(Member(f"{stem}/{_clean(info.name)}", outer.offset_data + info.offset_data, info.size))
    except _NotATar as e:
        if not cut:  # a cut inside the inner tar's first header: the outer archive's error says it
            raise UserError(f"{path}: inner tar {inner} is not a tar ({e}): {_REDOWNLOAD}") from None
    except _Broken as e:
        raise _truncated(path, members, f" in inner tar {inner}", str(e)) from None


def index_tar(path: str | os.PathLike, *, nested: bool = False) -> list[Member]:
    """One pass over the tar headers of `path`, seeking over the data: its regular files in archive order.

    nested=True: the outer members are tars (the train archive's <wnid>.tar); the result lists their
    members, named "<inner stem>/<name>", with offsets into the outer file. Raises UserError for an
    archive that is missing, not a tar, truncated or corrupt, naming the last whole member.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"no archive at {path}: the file does not exist")
    members: list[Member] = []
    with _open_archive(path) as raw:
        whole = _Window(raw, 0, os.fstat(raw.fileno()).st_size)
        if whole.size == 0:
            raise UserError(f"{path} is empty: {_REDOWNLOAD}")
        try:
            for outer in _headers(whole):
                if nested:
                    _index_inner(raw, path, outer, outer.size, members, cut=False)
                else:
                    members.append(Member(_clean(outer.name), outer.offset_data, outer.size))
        except _NotATar as e:
            raise UserError(f"{path} is not a tar archive ({e}): {_REDOWNLOAD}") from None
        except _Broken as e:
            if nested and e.member is not None:
                # The file ends inside an inner tar: name the last whole member in it, not the tar before.
                _index_inner(raw, path, e.member, whole.size - e.member.offset_data, members, cut=True)
            raise _truncated(path, members, "", str(e)) from None
    return members


def read_member(path: str | os.PathLike, member: Member) -> bytes:
    """Exactly `member.size` bytes at `member.offset` of the archive; a short read is a UserError."""
    with open(path, "rb") as f:
        return read_at(f, str(path), member)


def read_members(path: str | os.PathLike, members: Iterable[Member]) -> Iterator[bytes]:
    """Each member's bytes in the order given, from one open file (a shard's worth in one open)."""
    with open(path, "rb") as f:
        for member in members:
            yield read_at(f, str(path), member)


def read_at(f, path: str, member: Member) -> bytes:
    """`member`'s bytes from `f`, the archive at `path` already open (a shard task keeps it open)."""
    f.seek(member.offset)
    data = f.read(member.size)
    if len(data) != member.size:
        raise UserError(
            f"{path} is shorter than its index: member {member.name} needs bytes {member.offset}-"
            f"{member.offset + member.size} (the file changed since it was indexed?): index it again or {_REDOWNLOAD}"
        )
    return data


# --- The devkit ---------------------------------------------------------------------------------


def find_devkit(root: str | os.PathLike) -> str | None:
    """ROOT/ILSVRC2012_devkit_t12.tar.gz, else an extracted ROOT/ILSVRC2012_devkit_t12/ folder, else None.

    The archive comes first: it is what ships, and a folder beside it may be a partial extraction.
    """
    archive = Path(root) / DEVKIT_ARCHIVE
    if archive.is_file():
        return str(archive)
    folder = Path(root) / DEVKIT_FOLDER
    return str(folder) if folder.is_dir() else None


def read_devkit(path: str | os.PathLike) -> Devkit:
    """The leaf synsets and the validation ground truth, from the devkit archive (read in memory) or folder."""
    path = str(path)
    if os.path.isdir(path):
        files = _devkit_folder(path)
    elif os.path.isfile(path):
        files = _devkit_archive(path)
    else:
        raise UserError(f"no devkit at {path}: expected {DEVKIT_ARCHIVE} or an extracted {DEVKIT_FOLDER}/ folder")
    synsets = _leaf_synsets(files[META_MAT], f"{path}: {META_MAT}")
    truth = _ground_truth(files[GROUND_TRUTH], f"{path}: {GROUND_TRUTH}", len(synsets))
    return Devkit(synsets=synsets, val_ground_truth=truth)


def val_wnids(devkit: Devkit) -> list[str]:
    """The wnid of each validation image, in file order."""
    return [devkit.synsets[i - 1].wnid for i in devkit.val_ground_truth]


def _devkit_folder(path: str) -> dict[str, bytes]:
    files = {}
    for rel in (META_MAT, GROUND_TRUTH):
        file = Path(path) / rel
        if not file.is_file():
            raise UserError(
                f"{path} has no {rel}: extract all of {DEVKIT_ARCHIVE} there, or put the archive itself beside the image archives"
            )
        files[rel] = file.read_bytes()
    return files


def _devkit_archive(path: str) -> dict[str, bytes]:
    wanted = {f"{DEVKIT_FOLDER}/{rel}": rel for rel in (META_MAT, GROUND_TRUTH)}
    files: dict[str, bytes] = {}
    try:
        # Streaming ("r|*"): one forward pass through the gzip, stopping once both files are read.
        with tarfile.open(path, "r|*") as tar:
            for info in tar:
                rel = wanted.get(_clean(info.name))
                if rel and info.isreg():
                    files[rel] = tar.extractfile(info).read()
                    if len(files) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError) as e:
        if not files.keys() >= set(wanted.values()):
            raise UserError(f"{path} is not a readable {DEVKIT_ARCHIVE} ({e}): {_REDOWNLOAD}") from None
    for name, rel in wanted.items():
        if rel not in files:
            raise UserError(f"{path} has no {name}: {_REDOWNLOAD} (ILSVRC-2012 development kit, tasks 1 and 2)")
    return files


def _text(value) -> str:
    # squeeze_me=True gives a str, or an empty array for an empty MATLAB string.
    if isinstance(value, str):
        return value
    return "" if getattr(value, "size", 1) == 0 else str(value.item() if hasattr(value, "item") else value)


def _leaf_synsets(data: bytes, where: str) -> list[Synset]:
    import numpy as np
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError, mat_struct

    try:
        mat = loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    except (MatReadError, ValueError, TypeError, OSError) as e:
        raise UserError(f"{where} is not a MATLAB file scipy can read ({e}): {_REDOWNLOAD}") from None
    # squeeze_me turns the 1860x1 struct array into a 1-D object array of mat_struct (one synset: a bare mat_struct).
    records = np.atleast_1d(mat.get("synsets", np.empty(0))).ravel()
    if records.size == 0 or not all(isinstance(r, mat_struct) for r in records):
        raise UserError(f"{where} has no struct array 'synsets': {_REDOWNLOAD}")
    missing = [f for f in SYNSET_FIELDS if f not in records[0]._fieldnames]
    if missing:
        raise UserError(f"{where}: the synsets have no field {', '.join(missing)}: {_REDOWNLOAD}")
    try:
        leaves = [
            Synset(int(r.ILSVRC2012_ID), _text(r.WNID), _text(r.words))
            for r in records
            if int(r.num_children) == 0
        ]
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: a synset's ILSVRC2012_ID or num_children is not a number ({e}): {_REDOWNLOAD}") from None
    leaves.sort(key=lambda s: s.ilsvrc_id)
    ids = [s.ilsvrc_id for s in leaves]
    if ids != list(range(1, len(leaves) + 1)):
        raise UserError(f"{where}: the leaf synsets' IDs are not 1..{len(leaves)} (ILSVRC-2012 numbers its classes so): {_REDOWNLOAD}")
    wnids = [s.wnid for s in leaves]
    if len(set(wnids)) != len(wnids):
        raise UserError(f"{where}: a wnid appears twice among the leaf synsets: {_REDOWNLOAD}")
    return leaves


def _ground_truth(data: bytes, where: str, num_classes: int) -> list[int]:
    lines = data.decode("ascii", errors="replace").rstrip().splitlines()
    truth = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text.isdigit() or not 1 <= int(text) <= num_classes:
            raise UserError(
                f"{where} line {number}: {text!r} is not the ILSVRC2012_ID of one of the {num_classes} "
                f"leaf synsets in {META_MAT}: {_REDOWNLOAD}"
            )
        truth.append(int(text))
    return truth
