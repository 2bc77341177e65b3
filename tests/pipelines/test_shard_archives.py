"""`incept shard` on ImageNet as it ships: the archives read in place give the extracted tree's shards."""

import io
import os
import tarfile

import imagenet_format
import pytest

from pipelines.shard import ShardOptions, plan_job, run_job

pytestmark = pytest.mark.e2e

CLASSES = ["n01440764", "n01443537", "n01484850", "n01491361"]


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """The same images as the three archives, as the extracted tree (val in class folders) and flat val with Kaggle's CSV."""
    base = tmp_path_factory.mktemp("imagenet")
    shipped = imagenet_format.write_archives(base / "shipped", classes=CLASSES, train_per_class=5, num_val=12)
    imagenet_format.write_extracted(base / "tree", shipped)
    imagenet_format.write_extracted(base / "flat", shipped, val="flat")
    return shipped, base


def shard(src, out, split):
    result = run_job(plan_job(str(src), split, str(out), ShardOptions(shard_size=7)))
    return result, {n: (out / n).read_bytes() for n in sorted(os.listdir(out)) if n.endswith(".tar")}


def samples(shards):
    """key -> (label, image bytes) over the shards' members."""
    out = {}
    for data in shards.values():
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in members:
            key, ext = name.split(".", 1)
            if ext == "jpg":
                out[key] = (int(members[f"{key}.cls"]), members[name])
    return out


def test_archives_give_the_extracted_trees_shards(forms, tmp_path, ray_address):
    shipped, base = forms
    archived, archived_shards = shard(shipped["root"], tmp_path / "a-train", "train")
    extracted, extracted_shards = shard(base / "tree", tmp_path / "t-train", "train")
    assert archived.num_images == 20 and archived_shards == extracted_shards  # byte-identical
    assert (tmp_path / "a-train/manifest.json").read_bytes() == (tmp_path / "t-train/manifest.json").read_bytes()
    assert archived.num_skipped == 0  # the greyscale, CMYK and PNG-named-JPEG images are converted, not skipped

    # Validation: labelled through the devkit from the flat archive; the same samples as the tree's class folders.
    val, val_shards = shard(shipped["root"], tmp_path / "a-val", "val")
    _, tree_val_shards = shard(base / "tree", tmp_path / "t-val", "val")
    assert val.num_images == 12 and samples(val_shards) == samples(tree_val_shards)
    labels = {f"ILSVRC2012_val_{i + 1:08d}": CLASSES.index(w) for i, w in enumerate(shipped["val_wnids"])}
    assert {k: label for k, (label, _) in samples(val_shards).items()} == labels
    # The flat folder with Kaggle's CSV has the archive's sources too: byte-identical shards.
    _, flat_val_shards = shard(base / "flat", tmp_path / "f-val", "val")
    assert flat_val_shards == val_shards


def test_a_truncated_archive_is_one_line_before_any_shard(forms, tmp_path, cli, cli_env):
    shipped, _ = forms
    root = tmp_path / "cut"
    root.mkdir()
    size = os.path.getsize(shipped["train_archive"])
    imagenet_format.truncated_copy(shipped["train_archive"], root / "ILSVRC2012_img_train.tar", size * 2 // 3)
    proc = cli("shard", "--src", str(root), "--split", "train", "--out", str(tmp_path / "out"), env=cli_env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("incept shard: error: ") and "ILSVRC2012_img_train.tar" in line and "truncated" in line
    assert "truncated or corrupt after member " in line  # the last good member, where the download stopped
    assert not (tmp_path / "out").exists()  # found by the index pass, before anything is written
