import pytest

from pipelines.errors import UserError
from pipelines.imagenet import class_words, list_split

pytestmark = pytest.mark.unit


def touch(root, *paths):
    for p in paths:
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")


def test_train_labels_follow_sorted_class_folders(tmp_path):
    touch(tmp_path, "train/n2/b.JPEG", "train/n1/a.JPEG", "train/n3/c.JPEG", "train/n1/.hidden", "train/.cache/x")
    listing = list_split(tmp_path, "train")
    assert listing.classes == ["n1", "n2", "n3"]
    assert [(s.source, s.wnid, s.label) for s in listing.samples] == [
        ("train/n1/a.JPEG", "n1", 0),
        ("train/n2/b.JPEG", "n2", 1),
        ("train/n3/c.JPEG", "n3", 2),
    ]


def test_val_in_class_folders_uses_the_training_label_order(tmp_path):
    touch(tmp_path, "train/n1/a.JPEG", "train/n2/b.JPEG", "val/n2/v1.JPEG")
    listing = list_split(tmp_path, "val")
    assert [(s.source, s.label) for s in listing.samples] == [("val/n2/v1.JPEG", 1)]


def test_flat_val_reads_the_solution_csv(tmp_path):
    touch(tmp_path, "train/n1/a.JPEG", "train/n2/b.JPEG", "val/ILSVRC2012_val_00000001.JPEG", "val/ILSVRC2012_val_00000002.JPEG", "val/stray.JPEG")
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n2 10 20 30 40 n2 1 2 3 4\n"
        "ILSVRC2012_val_00000002,n1 5 5 50 50\n"
    )
    listing = list_split(tmp_path, "val")
    assert [(s.source, s.wnid, s.label) for s in listing.samples] == [
        ("val/ILSVRC2012_val_00000001.JPEG", "n2", 1),
        ("val/ILSVRC2012_val_00000002.JPEG", "n1", 0),
    ]
    assert listing.unlabelled == ["val/stray.JPEG"]


@pytest.mark.parametrize(
    "files, split, message",
    [
        ([], "train", "no training folder"),
        (["train/n1/a.JPEG"], "val", "no val folder"),
        (["train/n1/"], "train", "has no images"),
        (["train/n1/a.JPEG", "val/n9/v.JPEG"], "val", "'n9' is not a training class"),
        (["train/n1/a.JPEG", "val/v.JPEG"], "val", "needs"),
        (["train/n1/a.JPEG"], "test", "unknown split"),
    ],
)
def test_layout_errors_are_one_clear_line(tmp_path, files, split, message):
    for f in files:
        if f.endswith("/"):
            (tmp_path / f).mkdir(parents=True)
        else:
            touch(tmp_path, f)
    (tmp_path / "keep").write_text("")  # the root exists
    with pytest.raises(UserError, match=message) as err:
        list_split(tmp_path, split)
    assert "\n" not in str(err.value)


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list_split(tmp_path / "nowhere", "train")


def test_class_words(tmp_path):
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    assert class_words(tmp_path) == {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish"}
    assert class_words(tmp_path / "none") == {}
