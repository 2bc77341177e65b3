"""Reading a data set in the ILSVRC-2012 layout, extracted or as ImageNet ships it.

Extracted:
    ROOT/train/<wnid>/<file>                    the training split, one folder per class
    ROOT/val/<wnid>/<file>                      the validation split, sorted into class folders, or
    ROOT/val/<file>                             flat, labelled by ROOT/LOC_val_solution.csv (Kaggle's copy)
                                                or by the devkit beside it (ILSVRC2012_devkit_t12[.tar.gz])
    ROOT/LOC_synset_mapping.txt                 optional: "<wnid> <words>" per line
As shipped (REFERENCE.md, "ImageNet as it ships"), read in place, nothing extracted:
    ROOT/ILSVRC2012_img_train.tar               a tar of <wnid>.tar class tars
    ROOT/ILSVRC2012_img_val.tar                 ILSVRC2012_val_00000001.JPEG ... flat
    ROOT/ILSVRC2012_devkit_t12.tar.gz           meta.mat (synsets) and the validation ground truth

A split's extracted folder wins over its archive. A sample from an archive carries its member's
byte range, and its `source` is the path it would have extracted: `train/<wnid>/<file>`,
`val/<file>`, so shards from either form are the same.

Label index = position of the wnid in the sorted list of training classes (the class folders,
the class tars, or the devkit's 1,000 leaf synsets, which are the same list); the validation split
uses the training split's list (DESIGN.md, Shards), so the two always agree.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipelines import archives
from pipelines.errors import UserError

SPLITS = ("train", "val")
SOLUTION_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
ARCHIVES = {"train": archives.TRAIN_ARCHIVE, "val": archives.VAL_ARCHIVE}
# ILSVRC2012_val_00000001.JPEG is validation image 1: the number the ground truth and the
# blacklist count by.
VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})$")


@dataclass(frozen=True)
class Sample:
    source: str  # path relative to the data set's root, with "/" separators
    wnid: str
    label: int
    # Where the bytes are when they are inside an archive: (archive name under ROOT, offset, size).
    member: tuple[str, int, int] | None = None


@dataclass(frozen=True)
class Listing:
    classes: list[str]  # wnids in label order
    samples: list[Sample]  # sorted by source path
    unlabelled: list[str]  # flat-val files with no label (no row in the solution CSV or ground truth)
    labelled_by: str = ""  # what gave the flat validation split its labels, for the skip reason


def _visible(entries):
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _archive(root: Path, split: str) -> Path | None:
    path = root / ARCHIVES[split]
    return path if path.is_file() else None


def train_classes(root: str | os.PathLike) -> list[str]:
    """The sorted training classes: the label order of both splits."""
    root = Path(root)
    train = root / "train"
    if train.is_dir():
        classes = [e.name for e in _visible(os.scandir(train)) if e.is_dir()]
        if not classes:
            raise UserError(f"{train} has no class folders: expected ROOT/train/<wnid>/<image>")
        return classes
    if (tar := _archive(root, "train")) is not None:
        # The outer index only: a header per class tar, not the 1.28 M inside them.
        return sorted(PurePosixPath(m.name).stem for m in archives.index_tar(str(tar)) if m.name.endswith(".tar"))
    if (devkit := archives.find_devkit(str(root))) is not None:
        return sorted(s.wnid for s in archives.read_devkit(devkit).synsets)
    raise UserError(
        f"no training folder at {train}: expected ROOT/train/<wnid>/ (ILSVRC-2012 layout), "
        f"or {archives.TRAIN_ARCHIVE} or the devkit in {root}"
    )


def class_words(root: str | os.PathLike) -> dict[str, str]:
    """wnid -> words from LOC_synset_mapping.txt, else from the devkit's synsets, else {}."""
    path = Path(root) / SYNSET_MAPPING
    if path.is_file():
        words = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            wnid, _, text = line.strip().partition(" ")
            if wnid:
                words[wnid] = text.strip()
        return words
    if Path(root).is_dir() and (devkit := archives.find_devkit(str(root))) is not None:
        return {s.wnid: s.words for s in archives.read_devkit(devkit).synsets}
    return {}


def _files(folder: Path) -> list[Path]:
    return [Path(e.path) for e in _visible(os.scandir(folder)) if e.is_file()]


def list_split(root: str | os.PathLike, split: str) -> Listing:
    """Every image of `split` with its label. Raises UserError for a layout that cannot be read."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no data set at {root}: the folder does not exist")
    classes = train_classes(root)
    label_of = {wnid: i for i, wnid in enumerate(classes)}
    folder = root / split
    tar = _archive(root, split)
    if not folder.is_dir() and tar is None:
        raise UserError(f"no {split} folder at {folder} and no {ARCHIVES[split]} in {root}: expected ROOT/{split}/ (ILSVRC-2012 layout) or ImageNet's archives")

    if folder.is_dir():
        subdirs = [e.name for e in _visible(os.scandir(folder)) if e.is_dir()]
        if split == "train" or subdirs:
            samples = []
            for wnid in subdirs:
                _check_class(wnid, label_of, f"{split} class folder", root)
                samples += [Sample(p.relative_to(root).as_posix(), wnid, label_of[wnid]) for p in _files(folder / wnid)]
            listing = Listing(classes, samples, [])
        else:
            flat = [Sample(p.relative_to(root).as_posix(), "", -1) for p in _files(folder)]
            listing = _label_flat_val(root, flat, label_of, where=str(folder))
    elif split == "train":
        samples = []
        for m in archives.index_tar(str(tar), nested=True):
            wnid = PurePosixPath(m.name).parts[0]
            if PurePosixPath(m.name).name.startswith("."):
                continue
            _check_class(wnid, label_of, "class tar", root)
            samples.append(Sample(f"train/{m.name}", wnid, label_of[wnid], (tar.name, m.offset, m.size)))
        listing = Listing(classes, samples, [])
    else:
        flat = [
            Sample(f"val/{m.name}", "", -1, (tar.name, m.offset, m.size))
            for m in archives.index_tar(str(tar))
            if not PurePosixPath(m.name).name.startswith(".")
        ]
        listing = _label_flat_val(root, flat, label_of, where=str(tar))

    if not listing.samples:
        raise UserError(f"the {split} split at {folder if folder.is_dir() else tar} has no images")
    listing.samples.sort(key=lambda s: s.source)
    listing.unlabelled.sort()
    return listing


def _check_class(wnid: str, label_of: dict[str, int], what: str, root: Path) -> None:
    if wnid not in label_of:
        raise UserError(f"{what} {wnid!r} is not a training class: every wnid must be a class of the training split in {root}")


def _label_flat_val(root: Path, flat: list[Sample], label_of: dict[str, int], *, where: str) -> Listing:
    """Labels for a flat validation split: Kaggle's solution CSV if present, else the devkit's ground truth."""
    classes = list(label_of)
    if (root / SOLUTION_CSV).is_file():
        wnid_of, labelled_by = _read_solution(root), SOLUTION_CSV
        for wnid in set(wnid_of.values()):
            _check_class(wnid, label_of, f"{SOLUTION_CSV} label", root)
    elif (devkit := archives.find_devkit(str(root))) is not None:
        wnid_of, labelled_by = _devkit_labels(devkit, flat, where), "the devkit's ground truth"
    else:
        raise UserError(
            f"the flat validation split {where} needs labels: {root / SOLUTION_CSV} (ImageId,PredictionString), "
            f"or the devkit {archives.DEVKIT_ARCHIVE} beside it, or sort the images into val/<wnid>/ folders"
        )
    samples, unlabelled = [], []
    for s in flat:
        wnid = wnid_of.get(PurePosixPath(s.source).stem)
        if wnid is None:
            unlabelled.append(s.source)
        else:
            samples.append(Sample(s.source, wnid, label_of[wnid], s.member))
    return Listing(classes, samples, unlabelled, labelled_by)


def _devkit_labels(devkit: str, flat: list[Sample], where: str) -> dict[str, str]:
    """ImageId -> wnid through the ground truth's ILSVRC2012_IDs (their order is not the sorted wnid order)."""
    kit = archives.read_devkit(devkit)
    numbered = [s for s in flat if VAL_NAME.match(PurePosixPath(s.source).stem)]
    if len(kit.val_ground_truth) != len(numbered):
        raise UserError(
            f"the devkit's ground truth ({devkit}) lists {len(kit.val_ground_truth)} images but {where} holds "
            f"{len(numbered)}: use the ILSVRC2012 devkit that belongs to this validation set"
        )
    wnid_of_id = {s.ilsvrc_id: s.wnid for s in kit.synsets}
    labels = {}
    for number, synset_id in enumerate(kit.val_ground_truth, start=1):
        if synset_id not in wnid_of_id:
            raise UserError(f"the devkit's ground truth ({devkit}) gives image {number} the ID {synset_id}, which is not one of its leaf synsets")
        labels[f"ILSVRC2012_val_{number:08d}"] = wnid_of_id[synset_id]
    return labels


def _read_solution(root: Path) -> dict[str, str]:
    """ImageId -> wnid; the first token of PredictionString is the wnid (ImageNet's own CSV)."""
    path = root / SOLUTION_CSV
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise UserError(f"{path} must have the columns ImageId,PredictionString")
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in reader if row["PredictionString"]}


def read_exclusions(path: str | os.PathLike, listing: Listing) -> tuple[set[str], str]:
    """The sources an exclusion list names, and the list's sha256.

    One entry per line: a 1-based validation image number (the ILSVRC2014 blacklist's form:
    1 is ILSVRC2012_val_00000001) or a file name; blank lines and `#` comments are ignored.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read the exclusion list {path}: {err.strerror or err}") from None
    everything = [s.source for s in listing.samples] + listing.unlabelled
    by_name = {}
    for source in everything:
        by_name[PurePosixPath(source).name] = source
        by_name[PurePosixPath(source).stem] = source
    numbers = sorted(int(m.group(1)) for s in everything if (m := VAL_NAME.match(PurePosixPath(s).stem)))
    excluded = set()
    for line_no, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if entry.isdigit():
            number = int(entry)
            name = f"ILSVRC2012_val_{number:08d}"
            if name not in by_name:
                span = f"1..{numbers[-1]}" if numbers else "none: this split has no numbered validation images"
                raise UserError(f"{path} line {line_no}: image number {number} is out of range ({span}); the list must number this split's validation images")
        else:
            name = PurePosixPath(entry).name
            if name not in by_name:
                raise UserError(f"{path} line {line_no}: {entry!r} is not an image of this split")
        excluded.add(by_name[name])
    return excluded, hashlib.sha256(data).hexdigest()
