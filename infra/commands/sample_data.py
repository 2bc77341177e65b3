"""incept sample-data OUT: a small labelled data set in ImageNet layout."""

from __future__ import annotations

from dataclasses import asdict

from infra.output import emit
from pipelines.sample_data import SOURCES, make_sample_set


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample-data",
        help="write a small labelled data set in ImageNet layout",
        description="Write OUT/train/<wnid>/*.JPEG, OUT/val/<wnid>/*.JPEG and OUT/LOC_synset_mapping.txt: "
        "real JPEGs at ImageNet-like sizes, from scikit-learn's digits or synthetic patterns.",
    )
    p.add_argument("out", help="folder to create (must be new or empty)")
    p.add_argument("--classes", type=int, default=10, help="number of classes (digits: at most 10; default 10)")
    p.add_argument("--train-per-class", type=int, default=50, help="training images per class (default 50)")
    p.add_argument("--val-per-class", type=int, default=10, help="validation images per class (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--source", choices=SOURCES, default="digits", help="digits (learnable) or synthetic patterns")
    p.add_argument("--quirks", action="store_true", help="add a CMYK JPEG, a greyscale JPEG and a PNG named .JPEG")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    result = make_sample_set(
        args.out,
        classes=args.classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
        source=args.source,
        quirks=args.quirks,
    )
    emit(
        asdict(result),
        as_json=args.json,
        human=f"wrote {result.train_images} training and {result.val_images} validation images "
        f"of {len(result.classes)} classes to {result.root}",
    )
    return 0
