"""A growing source (`--append`) and the paper's evaluation set (`--exclude`), on the session's Ray."""

import json
import shutil

import pytest

from pipelines import manifest
from pipelines.errors import UserError
from pipelines.sample_data import make_sample_set
from pipelines.shard import ShardOptions, plan_job, run_job

pytestmark = pytest.mark.e2e


def shard(src, out, split="train", **options):
    return run_job(plan_job(str(src), split, str(out), ShardOptions(**options)))


def state(out):
    """name -> bytes of every shard in `out`."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def records(out):
    return manifest.read_samples(manifest.storage.locate(str(out)), json.loads((out / "manifest.json").read_text()))


@pytest.fixture()
def growing(tmp_path):
    root = tmp_path / "data"
    make_sample_set(root, classes=3, train_per_class=5, val_per_class=0, source="synthetic")
    return root


def add_images(root, donor, names):
    """Copy images from `donor` (another sample set) under new names: new, valid, distinct images."""
    donors = sorted(donor.glob("train/*/*.JPEG"))
    for name, src in zip(names, donors):
        (root / name).write_bytes(src.read_bytes())


def test_append_writes_new_shards_and_keeps_every_old_one(growing, tmp_path, ray_address):
    out = tmp_path / "shards"
    first = shard(growing, out, shard_size=4)
    assert (first.num_images, first.num_shards) == (15, 4)  # 4 + 4 + 4 + 3: the last one partial
    before, first_manifest = state(out), json.loads((out / "manifest.json").read_text())
    assert first_manifest["options"]["shard_size"] == 4 and first_manifest["samples"]["count"] == 15

    donor = tmp_path / "donor"
    make_sample_set(donor, classes=3, train_per_class=3, val_per_class=0, source="synthetic", seed=7)
    # Five new images; one has the file name (so the key) of an image already sharded in another class.
    add_images(growing, donor, ["train/n00000000/new_a.JPEG", "train/n00000001/new_b.JPEG", "train/n00000002/new_c.JPEG",
                                "train/n00000002/new_d.JPEG", "train/n00000002/n00000000_1.JPEG"])
    grown = shard(growing, out, shard_size=4, append=True)
    after = state(out)
    assert {n: after[n] for n in before} == before  # every earlier shard byte-identical, the partial one too
    assert sorted(set(after) - set(before)) == ["imagenet-train-000004.tar", "imagenet-train-000005.tar"]
    assert grown.written == ["imagenet-train-000004.tar", "imagenet-train-000005.tar"]
    assert grown.bytes_written == sum(len(after[n]) for n in grown.written)
    assert grown.num_images == 20 and grown.fingerprint != first.fingerprint
    grown_manifest = json.loads((out / "manifest.json").read_text())
    assert grown_manifest["num_samples"] == 20 and len(grown_manifest["shards"]) == 6
    keys = {r["source"]: r["key"] for r in records(out)}
    assert len(set(keys.values())) == 20
    assert keys["train/n00000000/n00000000_1.JPEG"] == "n00000000_1"  # the old key stays
    assert keys["train/n00000002/n00000000_1.JPEG"] == "n00000000_1-1"  # the newcomer gets a new suffix

    # Nothing new: nothing written, the same manifest.
    again = shard(growing, out, shard_size=4, append=True)
    assert again.written == [] and again.fingerprint == grown.fingerprint and state(out) == after

    # An append is not a fresh shard of the same source: that one permutes all 20 images.
    fresh = shard(growing, tmp_path / "fresh", shard_size=4)
    assert fresh.num_images == 20 and fresh.fingerprint != grown.fingerprint


def test_append_refuses_what_would_make_old_shards_wrong(growing, tmp_path, ray_address):
    out = tmp_path / "shards"
    shard(growing, out, shard_size=4)

    def refused(**options):
        with pytest.raises(UserError) as err:
            plan_job(str(growing), "train", str(out), ShardOptions(shard_size=options.pop("shard_size", 4), append=True, **options))
        message = str(err.value)
        assert "\n" not in message and "full reshard" in message
        return message

    assert "shard_size 8 (was 4)" in refused(shard_size=8)
    assert "quality" in refused(quality=80)

    changed = growing / "train/n00000001/n00000001_2.JPEG"
    original = changed.read_bytes()
    changed.write_bytes(original[:-2] + bytes([original[-2] ^ 1]) + original[-1:])  # same size, other bytes
    assert "train/n00000001/n00000001_2.JPEG changed" in refused()
    changed.write_bytes(original)

    (growing / "train/n00000000/n00000000_3.JPEG").unlink()
    assert "train/n00000000/n00000000_3.JPEG vanished" in refused()
    (growing / "train/n00000000/n00000000_3.JPEG").write_bytes(original)
    assert "changed" in refused()  # back, but other bytes than were sharded
    shutil.copy(growing / "train/n00000000/n00000000_4.JPEG", growing / "train/n00000000/n00000000_3.JPEG")

    (growing / "train/n00000009").mkdir()
    shutil.copy(original_path := growing / "train/n00000000/n00000000_4.JPEG", growing / "train/n00000009/x.JPEG")
    assert "new classes n00000009" in refused()
    assert original_path.exists()


def test_exclude_leaves_out_the_listed_validation_images(tmp_path, ray_address):
    root = tmp_path / "data"
    make_sample_set(root, classes=2, train_per_class=1, val_per_class=4, source="synthetic")  # val images 1..8
    blacklist = tmp_path / "blacklist.txt"
    blacklist.write_text("2\n7\nILSVRC2012_val_00000005.JPEG\n")
    result = shard(root, tmp_path / "val", split="val", exclude=str(blacklist))
    written = json.loads((tmp_path / "val" / "manifest.json").read_text())
    assert result.num_images == 5 and written["num_samples"] == 5
    excluded = [s["source"].rsplit("/", 1)[1] for s in written["skipped"] if s["reason"] == "excluded"]
    assert sorted(excluded) == ["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000005.JPEG", "ILSVRC2012_val_00000007.JPEG"]
    assert written["options"]["exclude_sha256"] == __import__("hashlib").sha256(blacklist.read_bytes()).hexdigest()
    assert not {"ILSVRC2012_val_00000002", "ILSVRC2012_val_00000005", "ILSVRC2012_val_00000007"} & {r["key"] for r in records(tmp_path / "val")}

    blacklist.write_text("9\n")
    with pytest.raises(UserError, match=r"line 1: image number 9 is out of range \(1\.\.8\)"):
        plan_job(str(root), "val", str(tmp_path / "v2"), ShardOptions(exclude=str(blacklist)))
