import io

import pytest
from PIL import Image

from pipelines.errors import UserError
from pipelines.imagenet import class_words, list_split
from pipelines.sample_data import make_sample_set

pytestmark = pytest.mark.unit


def test_digits_in_imagenet_layout_with_quirks(tmp_path):
    result = make_sample_set(tmp_path / "d", classes=3, train_per_class=4, val_per_class=2, quirks=True)
    root = tmp_path / "d"
    train, val = list_split(root, "train"), list_split(root, "val")
    assert train.classes == ["n00000000", "n00000001", "n00000002"] == result.classes
    assert len(train.samples) == 3 * 4 + 3 and len(val.samples) == 3 * 2
    assert {s.source.split("/")[-1] for s in train.samples if s.wnid == "n00000001"} == {f"n00000001_{i}.JPEG" for i in range(1, 5)}
    assert all(s.source.split("/")[-1].startswith("ILSVRC2012_val_") for s in val.samples)
    assert class_words(root)["n00000002"] == "digit two"
    formats = {}
    for s in train.samples + val.samples:
        image = Image.open(io.BytesIO((root / s.source).read_bytes()))
        assert 150 <= image.width <= 800 and 150 <= image.height <= 800
        formats[s.source] = (image.format, image.mode)
    assert sorted(formats[q] for q in result.quirks) == [("JPEG", "CMYK"), ("JPEG", "L"), ("PNG", "RGB")]
    assert sum(f == ("JPEG", "RGB") for f in formats.values()) == len(formats) - 3


def test_same_seed_same_files(tmp_path):
    make_sample_set(tmp_path / "a", classes=2, train_per_class=2, val_per_class=1, source="synthetic", seed=5)
    make_sample_set(tmp_path / "b", classes=2, train_per_class=2, val_per_class=1, source="synthetic", seed=5)
    for p in (tmp_path / "a").rglob("*.JPEG"):
        assert p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes()


@pytest.mark.parametrize("kwargs, message", [({"classes": 11}, "at most 10|1 to 10"), ({"source": "cifar"}, "unknown --source")])
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        make_sample_set(tmp_path / "x", **kwargs)


def test_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        make_sample_set(tmp_path / "x")
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep me"
