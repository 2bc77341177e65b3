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


# --- ImageNet as it ships: the three archives, read in place ---

CLASSES = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]


@pytest.fixture()
def shipped(tmp_path):
    import imagenet_format

    return imagenet_format.write_archives(tmp_path / "shipped", classes=CLASSES, train_per_class=3, num_val=10)


def test_train_from_the_archive_lists_what_the_tree_would(shipped, tmp_path):
    import imagenet_format

    listing = list_split(shipped["root"], "train")
    assert listing.classes == CLASSES
    tree = tmp_path / "tree"
    imagenet_format.write_extracted(tree, shipped)
    from_tree = list_split(tree, "train")
    assert [(s.source, s.wnid, s.label) for s in listing.samples] == [(s.source, s.wnid, s.label) for s in from_tree.samples]
    for s in listing.samples:  # each sample's byte range is its image
        name, offset, size = s.member
        with open(f"{shipped['root']}/{name}", "rb") as f:
            f.seek(offset)
            assert f.read(size) == (tree / s.source).read_bytes()


def test_val_from_the_archive_is_labelled_by_the_devkit(shipped):
    listing = list_split(shipped["root"], "val")
    assert listing.labelled_by == "the devkit's ground truth" and listing.unlabelled == []
    assert [(s.source, s.wnid, s.label) for s in listing.samples] == [
        (f"val/{name}", wnid, CLASSES.index(wnid)) for name, wnid in zip(shipped["val"], shipped["val_wnids"])
    ]
    assert class_words(shipped["root"]) == shipped["words"]


def test_flat_val_folder_with_the_devkit_beside_it(shipped, tmp_path):
    import imagenet_format

    root = tmp_path / "flat"
    imagenet_format.write_extracted(root, shipped, val="flat")
    (root / "LOC_val_solution.csv").unlink()
    imagenet_format.write_devkit_folder(root, shipped["devkit_files"])
    listing = list_split(root, "val")
    assert [(s.source, s.wnid) for s in listing.samples] == [(f"val/{n}", w) for n, w in zip(shipped["val"], shipped["val_wnids"])]
    assert all(s.member is None for s in listing.samples)


def test_val_archive_alone_takes_its_classes_from_the_devkit(shipped):
    import os

    os.unlink(shipped["train_archive"])
    assert list_split(shipped["root"], "val").classes == CLASSES


def test_a_ground_truth_that_disagrees_with_the_val_archive(shipped):
    import imagenet_format

    files = dict(shipped["devkit_files"])
    files["data/ILSVRC2012_validation_ground_truth.txt"] = b"1\n2\n"
    imagenet_format.write_devkit_archive(shipped["devkit_archive"], files)
    with pytest.raises(UserError, match=r"lists 2 images but .*ILSVRC2012_img_val.tar holds 10") as err:
        list_split(shipped["root"], "val")
    assert "\n" not in str(err.value)


def test_exclusions_by_number_and_by_name(shipped, tmp_path):
    from pipelines.imagenet import read_exclusions

    listing = list_split(shipped["root"], "val")
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("# ILSVRC2014 form\n3\n10\n\nILSVRC2012_val_00000001.JPEG\n")
    excluded, sha = read_exclusions(blacklist, listing)
    assert excluded == {"val/ILSVRC2012_val_00000003.JPEG", "val/ILSVRC2012_val_00000010.JPEG", "val/ILSVRC2012_val_00000001.JPEG"}
    assert len(sha) == 64
    for bad, message in (("0\n", "image number 0 is out of range"), ("11\n", r"out of range \(1\.\.10\)"), ("cat.jpg\n", "'cat.jpg' is not an image")):
        blacklist.write_text(bad)
        with pytest.raises(UserError, match=message):
            read_exclusions(blacklist, listing)
    with pytest.raises(UserError, match="cannot read the exclusion list"):
        read_exclusions(tmp_path / "none.txt", listing)
