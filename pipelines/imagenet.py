"""Reading a data set in the ILSVRC-2012 layout.

    ROOT/train/<wnid>/<file>                    the training split, one folder per class
    ROOT/val/<wnid>/<file>                      the validation split, sorted into class folders, or
    ROOT/val/<file> + ROOT/LOC_val_solution.csv the flat validation split as ImageNet ships it
    ROOT/LOC_synset_mapping.txt                 optional: "<wnid> <words>" per line

Label index = position of the wnid in the sorted list of training class folders; the validation
split uses the training split's list (DESIGN.md, Shards), so the two always agree.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import UserError

SPLITS = ("train", "val")
SOLUTION_CSV = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"


@dataclass(frozen=True)
class Sample:
    source: str  # path relative to the data set's root, with "/" separators
    wnid: str
    label: int


@dataclass(frozen=True)
class Listing:
    classes: list[str]  # wnids in label order
    samples: list[Sample]  # sorted by source path
    unlabelled: list[str]  # flat-val files with no row in LOC_val_solution.csv


def _visible(entries):
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def train_classes(root: str | os.PathLike) -> list[str]:
    """The sorted class folders of ROOT/train: the label order of both splits."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise UserError(f"no training folder at {train}: expected ROOT/train/<wnid>/ (ILSVRC-2012 layout)")
    classes = [e.name for e in _visible(os.scandir(train)) if e.is_dir()]
    if not classes:
        raise UserError(f"{train} has no class folders: expected ROOT/train/<wnid>/<image>")
    return classes


def class_words(root: str | os.PathLike) -> dict[str, str]:
    """wnid -> words from LOC_synset_mapping.txt, or {} when the file is absent."""
    path = Path(root) / SYNSET_MAPPING
    if not path.is_file():
        return {}
    words = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, text = line.strip().partition(" ")
        if wnid:
            words[wnid] = text.strip()
    return words


def _files(folder: Path) -> list[Path]:
    return [Path(e.path) for e in _visible(os.scandir(folder)) if e.is_file()]


def list_split(root: str | os.PathLike, split: str) -> Listing:
    """Every file of `split` with its label. Raises UserError for a layout that cannot be read."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no data set at {root}: the folder does not exist")
    classes = train_classes(root)
    label_of = {wnid: i for i, wnid in enumerate(classes)}
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"no {split} folder at {folder}: expected ROOT/{split}/ (ILSVRC-2012 layout)")

    samples: list[Sample] = []
    unlabelled: list[str] = []
    subdirs = [e.name for e in _visible(os.scandir(folder)) if e.is_dir()]
    if split == "train" or subdirs:
        for wnid in subdirs:
            if wnid not in label_of:
                raise UserError(
                    f"{split} class folder {wnid!r} is not a training class: "
                    f"every {split} wnid must have a folder under {root / 'train'}"
                )
            for path in _files(folder / wnid):
                samples.append(Sample(path.relative_to(root).as_posix(), wnid, label_of[wnid]))
    else:
        solution = _read_solution(root)
        for path in _files(folder):
            wnid = solution.get(path.stem)
            if wnid is None:
                unlabelled.append(path.relative_to(root).as_posix())
                continue
            if wnid not in label_of:
                raise UserError(
                    f"{SOLUTION_CSV} labels {path.stem} as {wnid!r}, which is not a training class"
                )
            samples.append(Sample(path.relative_to(root).as_posix(), wnid, label_of[wnid]))

    if not samples:
        raise UserError(f"the {split} split at {folder} has no images")
    samples.sort(key=lambda s: s.source)
    return Listing(classes=classes, samples=samples, unlabelled=sorted(unlabelled))


def _read_solution(root: Path) -> dict[str, str]:
    """ImageId -> wnid; the first token of PredictionString is the wnid (ImageNet's own CSV)."""
    path = root / SOLUTION_CSV
    if not path.is_file():
        raise UserError(
            f"flat validation folder {root / 'val'} needs {path} (ImageId,PredictionString), "
            "or sort the images into val/<wnid>/ folders"
        )
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise UserError(f"{path} must have the columns ImageId,PredictionString")
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in reader if row["PredictionString"]}
