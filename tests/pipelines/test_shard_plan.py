from collections import Counter

import pytest

from pipelines.imagenet import Sample
from pipelines.shard_plan import appended_keys, plan_append, plan_shards, sample_keys, shard_name

pytestmark = pytest.mark.unit


def samples(n, classes=10):
    return [Sample(f"train/n{i % classes}/img_{i}.JPEG", f"n{i % classes}", i % classes) for i in range(n)]


@pytest.mark.parametrize("n", [1, 7, 100, 1001])
@pytest.mark.parametrize("shard_size", [1, 10, 1000])
def test_every_sample_lands_in_exactly_one_shard(n, shard_size):
    plans = plan_shards(samples(n), shard_size=shard_size, seed=3, prefix="imagenet", split="train")
    assert len(plans) == -(-n // shard_size)
    assert all(len(p.entries) == shard_size for p in plans[:-1]) and 1 <= len(plans[-1].entries) <= shard_size
    sources = [e.source for p in plans for e in p.entries]
    assert sorted(sources) == sorted(s.source for s in samples(n))
    assert [p.name for p in plans] == [f"imagenet-train-{i:06d}.tar" for i in range(len(plans))]


def test_assignment_depends_on_the_seed_not_the_input_order():
    forward = plan_shards(samples(200), shard_size=50, seed=1, prefix="p", split="train")
    backward = plan_shards(samples(200)[::-1], shard_size=50, seed=1, prefix="p", split="train")
    other = plan_shards(samples(200), shard_size=50, seed=2, prefix="p", split="train")
    assert forward == backward
    assert [e.source for e in forward[0].entries] != [e.source for e in other[0].entries]


def test_shards_mix_classes():
    plans = plan_shards(samples(1000), shard_size=100, seed=0, prefix="p", split="train")
    for plan in plans:
        counts = Counter(e.wnid for e in plan.entries)
        assert len(counts) == 10 and max(counts.values()) < 25  # a class-sorted cut would give 1 class


def test_keys_are_unique_and_dot_free():
    keys = sample_keys(["train/a/x.y.JPEG", "train/b/x.y.JPEG", "val/z.JPEG", "val/ILSVRC2012_val_00000001.JPEG"])
    assert keys == ["x_y-1", "x_y-2", "z", "ILSVRC2012_val_00000001"]
    assert all("." not in k for k in keys)


def test_digest_changes_with_entries_and_options():
    a, b = plan_shards(samples(20), shard_size=10, seed=0, prefix="p", split="train")
    assert a.digest({"q": 95}) == a.digest({"q": 95})
    assert a.digest({"q": 95}) != a.digest({"q": 90})
    assert a.digest({"q": 95}) != b.digest({"q": 95})


def test_shard_name():
    assert shard_name("imagenet", "val", 12) == "imagenet-val-000012.tar"


def test_digest_does_not_depend_on_where_the_bytes_are():
    """A sample read from an archive and the same sample read from the extracted tree plan the same shard."""
    tree = plan_shards(samples(10), shard_size=10, seed=0, prefix="p", split="train")[0]
    in_archive = [Sample(s.source, s.wnid, s.label, ("ILSVRC2012_img_train.tar", 512 * i, 100)) for i, s in enumerate(samples(10))]
    archived = plan_shards(in_archive, shard_size=10, seed=0, prefix="p", split="train")[0]
    assert archived.entries[0].member is not None
    assert archived.digest({"q": 95}) == tree.digest({"q": 95})


def test_appended_keys_never_take_an_old_key():
    taken = {"a", "a-1", "b"}
    keys = appended_keys(["train/n1/a.JPEG", "train/n2/a.JPEG", "train/n1/b.JPEG", "train/n1/c.JPEG"], taken)
    assert keys == ["a-2", "a-3", "b-1", "c"]


def test_an_append_numbers_its_shards_after_the_existing_ones():
    first = plan_shards(samples(10), shard_size=4, seed=0, prefix="p", split="train")
    new = [Sample(f"train/n1/new_{i}.JPEG", "n1", 1) for i in range(6)]
    taken = {e.key for p in first for e in p.entries}
    appended = plan_append(new, taken_keys=taken, first_index=len(first), shard_size=4, seed=0, prefix="p", split="train")
    assert [p.name for p in appended] == ["p-train-000003.tar", "p-train-000004.tar"]
    assert [len(p.entries) for p in appended] == [4, 2]  # the earlier run's partial last shard is not refilled
    assert sorted(e.source for p in appended for e in p.entries) == sorted(s.source for s in new)
    # An interrupted append plans the same shards again.
    assert appended == plan_append(new[::-1], taken_keys=taken, first_index=3, shard_size=4, seed=0, prefix="p", split="train")
